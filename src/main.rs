//! The `p3o` binary; its commands are in `cli/`.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
