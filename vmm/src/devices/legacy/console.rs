//! Where the guest console's bytes go, and what the VMM learns from them: a guest kernel
//! panic prints "Kernel panic - not syncing: <reason>" before it resets the VM, and that
//! line is how the VMM tells a panic from a clean poweroff (there is no ACPI or pvpanic).

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

/// Longest console line the VMM keeps for inspection; longer lines are cut (the bytes
/// still reach the output).
const MAX_LINE: usize = 1024;
const PANIC_MARKER: &str = "Kernel panic - not syncing: ";

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
}

impl ConsoleSink {
    /// `out` is `None` to discard the output.
    pub fn new(out: Option<Box<dyn Write + Send>>, panic: GuestPanic) -> Self {
        Self {
            out,
            line: Vec::with_capacity(256),
            line_cut: false,
            panic,
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
        if let Some(out) = self.out.as_mut() {
            out.write_all(&self.line)?;
            out.flush()?;
        }
        Ok(())
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
