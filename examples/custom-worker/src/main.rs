//! Every `warren` command, with `welcome.send` registered next to the built-in tasks:
//! `custom-worker migrate`, `custom-worker worker --queue welcomes`, `custom-worker topology`, …

fn main() -> std::process::ExitCode {
    warren::App::new()
        .task(warren_example_custom_worker::SendWelcome)
        .run()
}
