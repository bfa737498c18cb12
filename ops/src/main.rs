//! `secretlog`: the operator CLI. All logic lives in the library.

fn main() -> std::process::ExitCode {
    secretlog_ops::cli::main()
}
