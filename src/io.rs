//! Files and standard streams at the edge, bounded and quiet.
//!
//! - [`read_text`]: a regular file (not a directory, FIFO or device), at most `limit` bytes,
//!   UTF-8, a leading byte-order mark dropped. `/dev/zero` as an input is refused at once.
//! - [`is_broken_pipe`]: whether an error chain ends in `EPIPE`, which the binary treats as the
//!   reader having gone away (exit quietly, as ripgrep does), unlike a full disk (an error).
//! - `-` is standard output wherever a command writes a file (`--export-*`, `batch -o`).
//! - [`install_interrupt_handler`], [`interrupted`]: Ctrl-C once stops at the next round, twice
//!   exits at once.

use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use thiserror::Error;

static INTERRUPTS: AtomicUsize = AtomicUsize::new(0);

/// Ctrl-C: the first asks the running command to stop at the next round ([`interrupted`]);
/// the second exits at once with 130. Installed once per process.
pub fn install_interrupt_handler() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = ctrlc::set_handler(|| {
            if INTERRUPTS.fetch_add(1, Ordering::SeqCst) >= 1 {
                exit_now(130);
            }
        });
    });
}

/// End the process at once, from any thread, without running exit handlers or static
/// destructors: llama.cpp's threads may be inside a decode, and tearing down its globals under
/// them crashes (`process::exit` runs `atexit`/`_fini`). Everything complete was flushed when it
/// was written (records, exports, traces are written whole and flushed).
pub fn exit_now(code: i32) -> ! {
    #[cfg(unix)]
    // SAFETY: `_exit` takes no pointers and never returns; skipping destructors is the point.
    unsafe {
        libc::_exit(code)
    }
    #[cfg(not(unix))]
    std::process::exit(code)
}

/// Whether Ctrl-C was pressed.
pub fn interrupted() -> bool {
    INTERRUPTS.load(Ordering::SeqCst) > 0
}

/// Why a file could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ReadError {
    #[error("{path}: cannot read: {reason}")]
    Io { path: String, reason: String },
    #[error("{path}: not a regular file")]
    NotRegular { path: String },
    #[error("{path}: larger than {limit} bytes; refusing to read it")]
    TooLarge { path: String, limit: u64 },
    #[error("{path}: not UTF-8 text (byte {offset})")]
    NotUtf8 { path: String, offset: usize },
}

/// Read a regular text file of at most `limit` bytes. The file type is checked before the file
/// is opened, and it is opened without blocking: a FIFO or a device never hangs the command.
pub fn read_text(path: &Path, limit: u64) -> Result<String, ReadError> {
    let name = path.display().to_string();
    let io = |e: std::io::Error| ReadError::Io { path: name.clone(), reason: e.to_string() };
    let file = open_regular(path)?;
    let meta = file.metadata().map_err(io)?;
    if meta.len() > limit {
        return Err(ReadError::TooLarge { path: name, limit });
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // the file may grow while it is read: never take more than the limit
    file.take(limit + 1).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 > limit {
        return Err(ReadError::TooLarge { path: name, limit });
    }
    let mut text = String::from_utf8(bytes).map_err(|e| ReadError::NotUtf8 { path: name.clone(), offset: e.utf8_error().valid_up_to() })?;
    if text.starts_with('\u{feff}') {
        text.drain(..'\u{feff}'.len_utf8());
    }
    Ok(text)
}

/// Open a regular file for reading, never blocking on a FIFO or a device (the type is checked
/// before opening and again on what was opened).
pub fn open_regular(path: &Path) -> Result<std::fs::File, ReadError> {
    let name = path.display().to_string();
    let io = |e: std::io::Error| ReadError::Io { path: name.clone(), reason: e.to_string() };
    if !std::fs::metadata(path).map_err(io)?.is_file() {
        return Err(ReadError::NotRegular { path: name });
    }
    let file = open_nonblocking(path).map_err(io)?;
    if !file.metadata().map_err(io)?.is_file() {
        return Err(ReadError::NotRegular { path: name });
    }
    Ok(file)
}

#[cfg(unix)]
fn open_nonblocking(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path)
}

#[cfg(not(unix))]
fn open_nonblocking(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::File::open(path)
}

/// Refuse to write any of `outputs` (flag, path) over one of `inputs` (flag, path) of the same
/// run: the same file, also through `./`, a symlink or a hard link. `-` (stdout) is never an
/// input.
pub fn refuse_output_onto_input(outputs: &[(&str, &Path)], inputs: &[(&str, &Path)]) -> anyhow::Result<()> {
    for (out_flag, out) in outputs.iter().filter(|(_, p)| !is_stdout(p)) {
        for (in_flag, input) in inputs {
            if same_file::is_same_file(out, input).unwrap_or(false) {
                anyhow::bail!("{out_flag} {} is the {in_flag} file of this run; refusing to overwrite an input", out.display());
            }
        }
    }
    Ok(())
}

/// Write a whole file: to a temporary file beside it, then renamed over it, so that a crash,
/// a full disk or Ctrl-C never leaves half of it (or destroys what was there).
pub fn write_whole(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map_or_else(|| "out".into(), |n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(".{name}.specrun-{}.tmp", std::process::id()));
    let written = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Whether an error (or anything in its chain) is a broken pipe.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}

/// Write a line to stderr; a closed or full stderr is ignored (there is nowhere left to say
/// anything), never a panic as with `eprintln!`.
pub fn note(msg: impl std::fmt::Display) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr().lock(), "{msg}");
}

/// Write text to stdout and flush; errors (a broken pipe, a full disk) are returned.
pub fn out(text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut o = std::io::stdout().lock();
    o.write_all(text.as_bytes())?;
    o.flush()
}

/// Whether the process was started with stdout closed (`>&-`). The Rust runtime then points
/// fd 1 at `/dev/null`, opened read-write; a shell's `>/dev/null` opens it write-only. Output
/// to a closed stdout is lost, so commands that write there refuse to start.
#[cfg(unix)]
pub fn stdout_was_closed() -> bool {
    // SAFETY: fcntl and fstat on fd 1 only read the descriptor's flags and status.
    unsafe {
        let flags = libc::fcntl(1, libc::F_GETFL);
        if flags < 0 {
            return true;
        }
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(1, &mut st) != 0 {
            return true;
        }
        let mut null: libc::stat = std::mem::zeroed();
        let is_null =
            libc::stat(c"/dev/null".as_ptr(), &mut null) == 0 && st.st_rdev == null.st_rdev && (st.st_mode & libc::S_IFMT) == libc::S_IFCHR;
        is_null && (flags & libc::O_ACCMODE) == libc::O_RDWR
    }
}

#[cfg(not(unix))]
pub fn stdout_was_closed() -> bool {
    false
}

/// The file of `--trace-rounds PATH` (`-`: stderr), created (or emptied) now.
pub fn trace_rounds_file(path: &Path) -> anyhow::Result<Box<dyn std::io::Write>> {
    use anyhow::Context as _;
    if path.as_os_str() == "-" {
        return Ok(Box::new(std::io::stderr()));
    }
    let file = std::fs::File::create(path).with_context(|| format!("--trace-rounds {}: cannot create", path.display()))?;
    Ok(Box::new(std::io::BufWriter::new(file)))
}

/// Whether a path names standard output.
pub fn is_stdout(path: &Path) -> bool {
    path.as_os_str() == "-"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_devices_directories_and_large_files_and_drops_a_bom() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(read_text(Path::new("/dev/zero"), 10), Err(ReadError::NotRegular { .. })));
        assert!(matches!(read_text(dir.path(), 10), Err(ReadError::NotRegular { .. })));
        let big = dir.path().join("big");
        std::fs::write(&big, "x".repeat(11)).unwrap();
        assert_eq!(read_text(&big, 10).unwrap_err().to_string(), format!("{}: larger than 10 bytes; refusing to read it", big.display()));
        let bom = dir.path().join("bom");
        std::fs::write(&bom, "\u{feff}{\"id\": 1}").unwrap();
        assert_eq!(read_text(&bom, 100).unwrap(), "{\"id\": 1}");
        let bin = dir.path().join("bin");
        std::fs::write(&bin, [b'a', 0xff, b'b']).unwrap();
        assert!(matches!(read_text(&bin, 100), Err(ReadError::NotUtf8 { offset: 1, .. })));
        assert!(matches!(read_text(&dir.path().join("missing"), 100), Err(ReadError::Io { .. })));
    }
}
