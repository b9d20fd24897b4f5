//! The error half of the OpenAPI document: every 4xx/5xx answer is
//! problem+json, and the answers any route can give (a body that is not
//! JSON, too large or too slow; a bad query string; the admin token; the
//! connection cap; a server failure) are declared on every route they
//! apply to, so that a client generated from the document, or a checker
//! such as schemathesis, knows them all.

use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{Content, OpenApi, Ref, RefOr, Response};

const PROBLEM: &str = "application/problem+json";

/// Adds the shared error answers and the admin security scheme.
pub(super) struct ErrorResponses;

impl utoipa::Modify for ErrorResponses {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        for (path, item) in openapi.paths.paths.iter_mut() {
            for operation in operations(item) {
                describe(path, operation);
            }
        }
    }
}

fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        item.get.as_mut(),
        item.put.as_mut(),
        item.post.as_mut(),
        item.delete.as_mut(),
        item.patch.as_mut(),
    ]
    .into_iter()
    .flatten()
}

fn describe(path: &str, operation: &mut Operation) {
    let device_api = operation
        .tags
        .as_ref()
        .is_some_and(|t| t.iter().any(|t| t == "device-api"));
    let admin = path.starts_with("/api/v1/") && path != "/api/v1/health" && !device_api;
    let json_body = operation
        .request_body
        .as_ref()
        .is_some_and(|b| b.content.contains_key("application/json"));
    let any_body = operation.request_body.is_some();
    let query = operation.parameters.as_ref().is_some_and(|params| {
        params
            .iter()
            .any(|p| matches!(p.parameter_in, utoipa::openapi::path::ParameterIn::Query))
    });

    let responses = &mut operation.responses.responses;
    // What the handlers declared: their error bodies are problem+json.
    for (status, response) in responses.iter_mut() {
        if !status.starts_with('4') && !status.starts_with('5') {
            continue;
        }
        if let RefOr::T(response) = response {
            if let Some(content) = response.content.shift_remove("application/json") {
                response.content.insert(PROBLEM.to_string(), content);
            }
            if response.content.is_empty() {
                response.content.insert(PROBLEM.to_string(), problem());
            }
        }
    }
    let mut add = |status: &str, description: &str| {
        responses
            .entry(status.to_string())
            .or_insert_with(|| problem_response(description));
    };
    if any_body {
        add(
            "400",
            "the body is not valid JSON, or could not be read (the connection failed)",
        );
        add(
            "408",
            "the body did not arrive within the body timeout (--http-body-timeout)",
        );
        add("413", "the body is larger than this route takes");
    }
    if json_body {
        add("415", "the body was not sent as application/json");
        add(
            "422",
            "the JSON body does not have the expected shape (the detail names the field)",
        );
    }
    if query {
        add(
            "422",
            "the query string does not fit the parameters (the detail names the one to fix)",
        );
    }
    if admin {
        add(
            "401",
            "this server has an admin token (--admin-token) and the request did not carry it as `Authorization: Bearer TOKEN`",
        );
        // Optional: servers without a token answer without one.
        let security = operation.security.get_or_insert_with(Vec::new);
        security.push(SecurityRequirement::new(
            "admin_bearer",
            Vec::<String>::new(),
        ));
        security.push(SecurityRequirement::default());
    }
    let responses = &mut operation.responses.responses;
    responses
        .entry("500".to_string())
        .or_insert_with(|| problem_response("the server failed; its log says why"));
    responses.entry("503".to_string()).or_insert_with(|| {
        problem_response(
            "the listener has as many connections open as it takes (--http-max-connections)",
        )
    });
}

fn problem() -> Content {
    Content::new(Some(RefOr::<utoipa::openapi::Schema>::Ref(
        Ref::from_schema_name("Problem"),
    )))
}

fn problem_response(description: &str) -> RefOr<Response> {
    let mut response = Response::new(description);
    response.content.insert(PROBLEM.to_string(), problem());
    RefOr::T(response)
}
