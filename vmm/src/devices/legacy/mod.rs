//! Legacy PC devices: the 8250 serial console and the i8042 reset line.

pub mod console;
pub mod i8042;
pub mod serial;

pub use console::{ConsoleSink, GuestPanic};
pub use i8042::I8042;
pub use serial::{Serial, SerialSnapshot};

/// COM1.
pub const SERIAL_PORT_BASE: u64 = 0x3f8;
pub const SERIAL_PORT_LEN: u64 = 8;
/// The i8042 data (0x60) through command (0x64) ports.
pub const I8042_PORT_BASE: u64 = 0x60;
pub const I8042_PORT_LEN: u64 = 5;
