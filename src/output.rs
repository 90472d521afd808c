//! How results are printed: human tables, or JSON/YAML for scripts (`-o table|json|yaml`).

use serde::Serialize;

/// Output format of a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputFormat {
    #[default]
    Table,
    Json,
    Yaml,
}

impl crate::choice::Choice for OutputFormat {
    const ALL: &'static [Self] = &[Self::Table, Self::Json, Self::Yaml];
    fn name(self) -> &'static str {
        match self {
            Self::Table => "table",
            Self::Json => "json",
            Self::Yaml => "yaml",
        }
    }
}
crate::choice_names!(OutputFormat);

/// Renders `value` as JSON or YAML, or as the table `table` draws.
pub fn render<T: Serialize>(
    value: &T,
    format: OutputFormat,
    table: impl FnOnce(&T) -> String,
) -> String {
    match format {
        OutputFormat::Table => table(value),
        OutputFormat::Json => serde_json::to_string_pretty(value).expect("serializable") + "\n",
        OutputFormat::Yaml => serde_yaml::to_string(value).expect("serializable"),
    }
}

/// A table in the one style every command prints.
pub fn table() -> comfy_table::Table {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
    t
}

/// The name serde gives a unit enum variant (`patient`, `zip`, `pad`).
pub fn name_of<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Writes `bytes` to the local file `path` whole: a temporary file beside it, given a plain
/// file's permissions (temporary files are private), renamed over it. A reader never sees half.
pub fn write_file_whole(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(&dir)?;
    std::io::Write::write_all(&mut tmp, bytes)?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}
