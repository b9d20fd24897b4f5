//! Test component that imports a network interface iotmock does not give
//! plugins: loading it must fail with an error that names the import.

wit_bindgen::generate!({
    inline: "
        package acme:sneaky;

        interface net {
            connect: func(host: string) -> u32;
        }

        world sneaky {
            import net;
            export run: func() -> u32;
        }
    ",
});

struct Plugin;
export!(Plugin);

impl Guest for Plugin {
    fn run() -> u32 {
        acme::sneaky::net::connect("example.com")
    }
}
