//! Reading a specs directory from disk into [`Sources`]: the only IO of this crate.

use std::fs;
use std::io;
use std::path::Path;

use crate::sources::Sources;

/// File extensions read: specs and JSON Schemas (`.yaml`, `.yml`, `.json`) and Avro (`.avsc`).
pub const EXTENSIONS: [&str; 4] = ["yaml", "yml", "json", "avsc"];

/// Reads every spec and schema file under `dir` (recursively, skipping hidden entries), with
/// paths relative to `dir`.
pub fn load_dir(dir: &Path) -> io::Result<Sources> {
    let mut sources = Sources::new();
    walk(dir, dir, &mut sources)?;
    Ok(sources)
}

fn walk(root: &Path, dir: &Path, sources: &mut Sources) -> io::Result<()> {
    let mut entries = fs::read_dir(dir)?.collect::<Result<Vec<_>, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        if entry.file_type()?.is_dir() {
            walk(root, &path, sources)?;
            continue;
        }
        let wanted = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| EXTENSIONS.contains(&e));
        if !wanted {
            continue;
        }
        let text = fs::read_to_string(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        // `path` is under `root` by construction of the walk.
        let relative = path.strip_prefix(root).unwrap_or(&path);
        let name = relative
            .components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/");
        sources.insert(name, text);
    }
    Ok(())
}
