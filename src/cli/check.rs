// SPDX-License-Identifier: GPL-3.0-or-later
//! `fanout-milter check-config`: validates the configuration and prints the effective
//! settings.

use super::{Outcome, complain, load_config};
use std::path::Path;
use std::process::ExitCode;

/// Loads the configuration at `path` and prints it as the daemon would run it, with
/// where the Postfix-derived values came from.
pub fn check_config(path: &Path) -> Outcome {
    let mut config = load_config(path)?;
    if let Some(warning) = config.listen.exposure_warning() {
        complain(format_args!("warning: {warning}"));
    }
    println!(
        "# {}: configuration OK; effective settings:",
        path.display()
    );
    println!(
        "# [postfix] recipient_delimiter: {}",
        config.postfix.delimiter_origin
    );
    config.raw.postfix.recipient_delimiter =
        Some(config.postfix.recipient_delimiter.as_str().to_owned());
    println!("# [postfix] myorigin: {}", config.postfix.myorigin_origin);
    config.raw.postfix.myorigin = Some(config.postfix.myorigin.clone());
    println!("# [notices] {}", config.notices.describe());
    print!("{}", config.effective_toml());
    Ok(ExitCode::SUCCESS)
}
