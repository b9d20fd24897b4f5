"""Every API route is reachable from the client: the route table in
`iotmock/routes.py` is compared with the server's own OpenAPI document."""

import inspect

import iotmock.client
from iotmock.routes import ROUTES

METHODS = {"get", "put", "post", "patch", "delete", "head", "options"}
#: Served, but not described in the document itself.
UNDESCRIBED = {("GET", "/api/v1/openapi.json")}


def test_every_route_in_openapi_has_a_client_method(iotmock_session):
    spec = iotmock_session.openapi()
    served = {
        (method.upper(), path) for path, item in spec["paths"].items() for method in item if method in METHODS
    }
    missing = sorted(served - ROUTES.keys())
    assert not missing, (
        "routes the Python client lacks; add a method and a line in python/src/iotmock/routes.py: "
        + ", ".join(f"{m} {p}" for m, p in missing)
    )
    stale = sorted(ROUTES.keys() - served - UNDESCRIBED)
    assert not stale, f"routes in the client's table that the server no longer has: {stale}"


def test_the_table_names_methods_of_the_client_classes():
    classes = {cls for _, cls in inspect.getmembers(iotmock.client, inspect.isclass)}
    for route, method in ROUTES.items():
        owner = getattr(iotmock.client, method.__qualname__.split(".")[0])
        assert owner in classes and getattr(owner, method.__name__) is method, route
