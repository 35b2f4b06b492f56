//! `warren`: one binary, every role, with the built-in tasks. See `warren --help`, and
//! [`warren::App`] to build the same binary with your own tasks.

fn main() -> std::process::ExitCode {
    warren::App::new().run()
}
