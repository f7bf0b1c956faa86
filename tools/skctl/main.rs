//! `skctl`: inspect, verify and export a walkeeper store or checkpoint,
//! read-only. The logic is in `walkeeper::inspect`.

fn main() -> std::process::ExitCode {
    walkeeper::inspect::cli::main()
}
