//! `specrun config path` / `specrun config init`: which models file is read, and a copy of
//! the shipped defaults to edit.

use crate::cli::ConfigCommand;
use crate::formats::models_toml::{self, ConfigSource, BUILTIN};
use crate::infer::{plan::config_source, ModelSelection};
use anyhow::{anyhow, bail, Context as _, Result};
use std::process::ExitCode;

pub fn config(cmd: &ConfigCommand) -> Result<ExitCode> {
    match cmd {
        ConfigCommand::Path { config } => {
            let sel = ModelSelection { config: config.clone(), ..ModelSelection::default() };
            let used = match config_source(&sel) {
                ConfigSource::File { path, rule } => format!("{} ({rule})", path.display()),
                ConfigSource::Builtin => "built-in defaults (no models file found)".to_string(),
            };
            let user = models_toml::user_config_dir().map(|d| d.join("models.toml").display().to_string());
            crate::io::out(&format!(
                "{used}\nlooked for, in order: --config, $SPECRUN_CONFIG, ./models.toml, {}, built-in defaults\n",
                user.as_deref().unwrap_or("(no user config directory)")
            ))?;
            Ok(ExitCode::SUCCESS)
        }
        ConfigCommand::Init { path, force } => {
            let path = match path {
                Some(p) => p.clone(),
                None => models_toml::user_config_dir()
                    .ok_or_else(|| anyhow!("no user config directory (is $HOME set?); name a FILE"))?
                    .join("models.toml"),
            };
            if path.exists() && !force {
                bail!("{} exists: pass --force to replace it", path.display());
            }
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
            }
            std::fs::write(&path, BUILTIN).with_context(|| format!("{}: cannot write", path.display()))?;
            crate::io::out(&format!("wrote {}\n", path.display()))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
