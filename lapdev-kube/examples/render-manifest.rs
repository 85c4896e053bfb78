//! Renders the manager's install manifest to stdout, for `deploy/validate.sh` and for
//! trying the renderer by hand.
//!
//! ```text
//! cargo run -p lapdev-kube --example render-manifest -- \
//!     [--server-url URL] [--token TOKEN] [--cluster-name NAME] [--ca-file PEM] [--image IMAGE]
//! ```
//!
//! Without arguments it uses an example URL and a dummy, well-formed token.

use std::process::ExitCode;

use lapdev_kube::manifest::{ManifestParams, render_manifest};

const EXAMPLE_TOKEN: &str = "lapdev_ct_EXAMPLEexampleEXAMPLEexampleEXAMPLEexample0";

fn main() -> ExitCode {
    let mut params = ManifestParams::new(
        "https://lapdev.example.com",
        EXAMPLE_TOKEN,
        "example-cluster",
    );
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let Some(value) = args.next() else {
            eprintln!("{flag} needs a value");
            return ExitCode::from(2);
        };
        match flag.as_str() {
            "--server-url" => params.server_url = value,
            "--token" => params.cluster_token = value,
            "--cluster-name" => params.cluster_name = value,
            "--image" => params.image = value,
            "--ca-file" => match std::fs::read_to_string(&value) {
                Ok(pem) => params.server_ca_pem = Some(pem),
                Err(e) => {
                    eprintln!("cannot read {value}: {e}");
                    return ExitCode::FAILURE;
                }
            },
            _ => {
                eprintln!("unknown flag {flag}");
                return ExitCode::from(2);
            }
        }
    }
    match params.validate() {
        Ok(warnings) => {
            for w in warnings {
                eprintln!("warning: {w}");
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    }
    match render_manifest(&params) {
        Ok(yaml) => {
            print!("{yaml}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
