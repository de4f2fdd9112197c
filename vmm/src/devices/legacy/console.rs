//! Where the guest console's bytes go, and what the VMM learns from them: a guest kernel
//! panic prints "Kernel panic - not syncing: <reason>" before it resets the VM, and that
//! line is how the VMM tells a panic from a clean poweroff (there is no ACPI or pvpanic).

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

/// Longest console line the VMM keeps for inspection; longer lines are cut (the bytes
/// still reach the output).
const MAX_LINE: usize = 1024;
const PANIC_MARKER: &str = "Kernel panic - not syncing: ";
/// Most bytes of guest console output written to the log per VM: a guest that prints
/// without end fills no host disk. Past it one marker line is written and the rest
/// dropped (a kernel panic is still seen: lines are inspected before they are counted).
pub const MAX_CONSOLE_BYTES: u64 = 16 << 20;

/// The first panic reason the guest kernel printed, shared with the VM's run loop.
#[derive(Clone, Default)]
pub struct GuestPanic(Arc<Mutex<Option<String>>>);

impl GuestPanic {
    pub fn get(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_once(&self, reason: String) {
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(reason);
        }
    }
}

/// Line-buffers the console into `out` and watches for kernel panics.
pub struct ConsoleSink {
    out: Option<Box<dyn Write + Send>>,
    line: Vec<u8>,
    line_cut: bool,
    panic: GuestPanic,
    /// Bytes written to `out`, and the most it takes.
    written: u64,
    limit: u64,
}

impl ConsoleSink {
    /// `out` is `None` to discard the output.
    pub fn new(out: Option<Box<dyn Write + Send>>, panic: GuestPanic) -> Self {
        Self::with_limit(out, panic, MAX_CONSOLE_BYTES)
    }

    /// As [`Self::new`], with a limit other than [`MAX_CONSOLE_BYTES`].
    pub fn with_limit(out: Option<Box<dyn Write + Send>>, panic: GuestPanic, limit: u64) -> Self {
        Self {
            out,
            line: Vec::with_capacity(256),
            line_cut: false,
            panic,
            written: 0,
            limit,
        }
    }

    fn end_line(&mut self) -> io::Result<()> {
        if !self.line_cut {
            let text = String::from_utf8_lossy(&self.line);
            if let Some(pos) = text.find(PANIC_MARKER) {
                let reason: String = text[pos + PANIC_MARKER.len()..]
                    .trim_end()
                    .chars()
                    .filter(|c| !c.is_control())
                    .collect();
                self.panic.set_once(reason);
            }
        }
        let result = self.write_out();
        self.line.clear();
        self.line_cut = false;
        result
    }

    fn write_out(&mut self) -> io::Result<()> {
        let Some(out) = self.out.as_mut() else {
            return Ok(());
        };
        if self.written >= self.limit {
            return Ok(());
        }
        let n = self.line.len() as u64;
        if self.written + n > self.limit {
            self.written = self.limit;
            let marker = format!(
                "\n[husk-vmm: the guest console wrote over {} MiB; the rest is not logged]\n",
                self.limit >> 20
            );
            out.write_all(marker.as_bytes())?;
            return out.flush();
        }
        self.written += n;
        out.write_all(&self.line)?;
        out.flush()
    }

    /// Writes out a partial last line (at VM exit).
    pub fn finish(&mut self) -> io::Result<()> {
        if !self.line.is_empty() {
            self.line.push(b'\n');
            self.end_line()?;
        }
        Ok(())
    }
}

impl Write for ConsoleSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        for &b in buf {
            self.line.push(b);
            if b == b'\n' {
                self.end_line()?;
            } else if self.line.len() >= MAX_LINE {
                // Pass long lines through in pieces; they are not inspected.
                self.write_out()?;
                self.line.clear();
                self.line_cut = true;
            }
        }
        Ok(buf.len())
    }

    /// Lines are written when they end; vm-superio flushes after every byte.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn passes_bytes_and_detects_panic() {
        let out = Shared::default();
        let panic = GuestPanic::default();
        let mut sink = ConsoleSink::new(Some(Box::new(out.clone())), panic.clone());
        sink.write_all(b"booting\r\n[    1.0] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000300\r\n")
            .unwrap();
        sink.write_all(b"Kernel panic - not syncing: second\n")
            .unwrap();
        sink.write_all(b"partial").unwrap();
        assert_eq!(
            panic.get().as_deref(),
            Some("Attempted to kill init! exitcode=0x00000300")
        );
        sink.finish().unwrap();
        let all = out.0.lock().unwrap().clone();
        assert!(all.starts_with(b"booting\r\n"));
        assert!(all.ends_with(b"partial\n"));
    }

    #[test]
    fn the_log_stops_at_its_limit_with_a_marker_and_panics_are_still_seen() {
        let out = Shared::default();
        let panic = GuestPanic::default();
        let mut sink = ConsoleSink::with_limit(Some(Box::new(out.clone())), panic.clone(), 4 << 20);
        let line = [b'y'; 99].iter().chain(b"\n").copied().collect::<Vec<u8>>();
        for _ in 0..100_000 {
            sink.write_all(&line).unwrap();
        }
        sink.write_all(b"Kernel panic - not syncing: late\n")
            .unwrap();
        let all = out.0.lock().unwrap().clone();
        assert!(
            all.len() as u64 <= (4 << 20) + 200,
            "{} bytes logged",
            all.len()
        );
        let tail = String::from_utf8_lossy(&all[all.len() - 120..]).into_owned();
        assert!(
            tail.contains("over 4 MiB; the rest is not logged"),
            "{tail}"
        );
        assert_eq!(all.iter().filter(|b| **b == b'[').count(), 1, "one marker");
        assert_eq!(panic.get().as_deref(), Some("late"));
    }

    #[test]
    fn no_panic_on_ordinary_output_and_bounded_lines() {
        let panic = GuestPanic::default();
        let mut sink = ConsoleSink::new(None, panic.clone());
        sink.write_all(&vec![b'x'; 10 * MAX_LINE]).unwrap();
        assert!(sink.line.len() < MAX_LINE);
        // A marker in the middle of an overlong line is not inspected.
        sink.write_all(b"Kernel panic - not syncing: hidden\n")
            .unwrap();
        sink.write_all(b"\xff\xfe garbage \x00\n").unwrap();
        assert_eq!(panic.get(), None);
    }
}
