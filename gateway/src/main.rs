//! The `portcullis-gateway` binary; see `portcullis-gateway --help`.

fn main() -> std::process::ExitCode {
    portcullis_gateway::cli::main()
}
