//! Loading the guest kernel, initramfs and command line, and filling the Linux zero page
//! (`struct boot_params`) for the 64-bit boot protocol (Documentation/x86/boot.rst).

use std::fs::File;
use std::io::Read;
use std::path::Path;

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::{bzimage::BzImage, elf::Elf, KernelLoader};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use crate::arch::x86_64::layout::{CMDLINE_MAX_SIZE, CMDLINE_START, HIMEM_START, ZERO_PAGE_START};
use crate::arch::x86_64::memory::E820Entry;

/// The command line the VMM always passes: serial console, reset through the i8042 (which
/// the VMM treats as the guest powering off), reboot at once on panic.
pub const BASE_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1";

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;
const LOADFLAG_LOADED_HIGH: u8 = 0x01;
const XLF_KERNEL_64: u16 = 0x01;
/// Offset of the 64-bit entry point from the start of a bzImage's protected-mode code.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
const PAGE_SIZE: u64 = 4096;

/// Errors loading the guest's boot files.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("Cannot open kernel {0}")]
    OpenKernel(String, #[source] std::io::Error),
    #[error("Kernel {0} is neither an ELF vmlinux nor a bzImage")]
    UnknownKernelFormat(String),
    #[error("Cannot load kernel {0}")]
    LoadKernel(String, #[source] linux_loader::loader::Error),
    #[error("bzImage {0} has no 64-bit entry point (XLF_KERNEL_64 unset)")]
    No64BitEntry(String),
    #[error("Cannot read initramfs {0}")]
    ReadInitramfs(String, #[source] std::io::Error),
    #[error(
        "Initramfs of {size} bytes does not fit between the kernel (ends at {kernel_end:#x}) \
         and the end of low memory ({limit:#x}); give the VM more memory"
    )]
    InitramfsTooLarge {
        size: u64,
        kernel_end: u64,
        limit: u64,
    },
    #[error("Kernel command line is {0} bytes; the limit is {CMDLINE_MAX_SIZE}")]
    CmdlineTooLong(usize),
    #[error("Cannot write boot data to guest memory")]
    GuestMemory(#[source] vm_memory::GuestMemoryError),
}

/// What the loaded kernel needs to start.
#[derive(Clone, Copy)]
pub struct LoadedKernel {
    /// 64-bit entry point.
    pub entry: u64,
    /// First byte the kernel may use after it (decompression included).
    pub end: u64,
    /// The bzImage's setup header, if it was one.
    pub setup_header: Option<setup_header>,
}

/// Loads `path` (ELF vmlinux or bzImage) into guest memory.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel, BootError> {
    let name = path.display().to_string();
    let mut file = File::open(path).map_err(|e| BootError::OpenKernel(name.clone(), e))?;
    let mut magic = [0u8; 4];
    file.read_exact(&mut magic)
        .map_err(|_| BootError::UnknownKernelFormat(name.clone()))?;
    if magic == *b"\x7fELF" {
        let r = Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START)))
            .map_err(|e| BootError::LoadKernel(name, e))?;
        Ok(LoadedKernel {
            entry: r.kernel_load.raw_value(),
            end: r.kernel_end,
            setup_header: None,
        })
    } else {
        let r =
            BzImage::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START))).map_err(|e| {
                match e {
                    linux_loader::loader::Error::Bzimage(
                        linux_loader::loader::bzimage::Error::InvalidBzImage,
                    ) => BootError::UnknownKernelFormat(name.clone()),
                    e => BootError::LoadKernel(name.clone(), e),
                }
            })?;
        let hdr = r
            .setup_header
            .ok_or_else(|| BootError::UnknownKernelFormat(name.clone()))?;
        if hdr.xloadflags & XLF_KERNEL_64 == 0 {
            return Err(BootError::No64BitEntry(name));
        }
        let load = r.kernel_load.raw_value();
        // The decompressor works in place and needs `init_size` bytes from the load address.
        let end = r.kernel_end.max(load + u64::from(hdr.init_size));
        Ok(LoadedKernel {
            entry: load + BZIMAGE_64BIT_ENTRY_OFFSET,
            end,
            setup_header: Some(hdr),
        })
    }
}

/// Where the initramfs goes: page-aligned, as high as allowed, above the kernel.
pub fn initramfs_address(
    size: u64,
    kernel_end: u64,
    low_ram_end: u64,
    initrd_addr_max: u64,
) -> Result<u64, BootError> {
    let limit = low_ram_end.min(initrd_addr_max.saturating_add(1));
    let too_large = || BootError::InitramfsTooLarge {
        size,
        kernel_end,
        limit,
    };
    let addr = limit.checked_sub(size).ok_or_else(too_large)? & !(PAGE_SIZE - 1);
    if addr < kernel_end {
        return Err(too_large());
    }
    Ok(addr)
}

/// Reads the initramfs into guest memory; returns its address and size.
pub fn load_initramfs(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel: &LoadedKernel,
    low_ram_end: u64,
) -> Result<(u64, u32), BootError> {
    let name = path.display().to_string();
    let data = std::fs::read(path).map_err(|e| BootError::ReadInitramfs(name.clone(), e))?;
    // Boot protocol >= 2.03 gives the highest address; before that it is 0x37ffffff.
    let max = kernel
        .setup_header
        .map(|h| u64::from(h.initrd_addr_max))
        .filter(|m| *m != 0)
        .unwrap_or(0x37ff_ffff);
    let size = data.len() as u64;
    if size > u64::from(u32::MAX) {
        return Err(BootError::InitramfsTooLarge {
            size,
            kernel_end: kernel.end,
            limit: max,
        });
    }
    let addr = initramfs_address(size, kernel.end, low_ram_end, max)?;
    mem.write_slice(&data, GuestAddress(addr))
        .map_err(BootError::GuestMemory)?;
    Ok((addr, size as u32))
}

/// The full command line: ours, then the user's.
pub fn build_cmdline(extra: &str) -> Result<String, BootError> {
    let extra = extra.trim();
    let line = if extra.is_empty() {
        BASE_CMDLINE.to_owned()
    } else {
        format!("{BASE_CMDLINE} {extra}")
    };
    // Leave room for the terminating NUL.
    if line.len() >= CMDLINE_MAX_SIZE {
        return Err(BootError::CmdlineTooLong(line.len()));
    }
    Ok(line)
}

/// Fills the zero page.
pub fn build_boot_params(
    header: Option<setup_header>,
    cmdline_len: usize,
    initramfs: Option<(u64, u32)>,
    e820: &[E820Entry],
) -> boot_params {
    let mut params = boot_params {
        hdr: header.unwrap_or_else(|| setup_header {
            boot_flag: KERNEL_BOOT_FLAG_MAGIC,
            header: KERNEL_HDR_MAGIC,
            kernel_alignment: KERNEL_MIN_ALIGNMENT,
            ..Default::default()
        }),
        ..Default::default()
    };
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.loadflags |= LOADFLAG_LOADED_HIGH;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    if let Some((addr, size)) = initramfs {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size;
    }
    let n = e820.len().min(params.e820_table.len());
    for (slot, e) in params.e820_table.iter_mut().zip(&e820[..n]) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind,
        };
    }
    params.e820_entries = n as u8;
    params
}

/// Writes the command line and zero page into guest memory.
pub fn write_boot_data(
    mem: &GuestMemoryMmap,
    cmdline: &str,
    params: &boot_params,
) -> Result<(), BootError> {
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(CMDLINE_START))
        .map_err(BootError::GuestMemory)?;
    mem.write_obj(*params, GuestAddress(ZERO_PAGE_START))
        .map_err(BootError::GuestMemory)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::memory::e820_map;

    #[test]
    fn cmdline() {
        assert_eq!(build_cmdline("").unwrap(), BASE_CMDLINE);
        assert_eq!(
            build_cmdline("  quiet husk.test=poweroff ").unwrap(),
            format!("{BASE_CMDLINE} quiet husk.test=poweroff")
        );
        assert!(matches!(
            build_cmdline(&"x".repeat(CMDLINE_MAX_SIZE)),
            Err(BootError::CmdlineTooLong(_))
        ));
    }

    #[test]
    fn initramfs_placement() {
        let mib = 1u64 << 20;
        // Top of memory, page-aligned down.
        assert_eq!(
            initramfs_address(3 * mib + 5, 20 * mib, 256 * mib, u64::MAX).unwrap(),
            (256 * mib - 3 * mib - 5) & !4095
        );
        // initrd_addr_max caps it.
        assert_eq!(
            initramfs_address(mib, 20 * mib, 4096 * mib, 0x7fff_ffff).unwrap(),
            0x8000_0000 - mib
        );
        // Would overlap the kernel.
        assert!(matches!(
            initramfs_address(240 * mib, 20 * mib, 256 * mib, u64::MAX),
            Err(BootError::InitramfsTooLarge { .. })
        ));
        assert!(initramfs_address(u64::MAX, 0, 256 * mib, u64::MAX).is_err());
    }

    #[test]
    fn zero_page() {
        let e820 = e820_map(512 << 20);
        let p = build_boot_params(None, 100, Some((0x1000_0000, 4096)), &e820);
        let hdr = p.hdr;
        assert_eq!({ hdr.header }, KERNEL_HDR_MAGIC);
        assert_eq!({ hdr.boot_flag }, KERNEL_BOOT_FLAG_MAGIC);
        assert_eq!({ hdr.type_of_loader }, 0xff);
        assert_eq!({ hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ hdr.cmdline_size }, 100);
        assert_eq!({ hdr.ramdisk_image }, 0x1000_0000);
        assert_eq!({ hdr.ramdisk_size }, 4096);
        assert_eq!(p.e820_entries as usize, e820.len());
        let t = p.e820_table[2];
        assert_eq!({ t.addr }, HIMEM_START);
        assert_eq!({ t.r#type }, 1);
        // A bzImage's own header is kept.
        let own = setup_header {
            header: KERNEL_HDR_MAGIC,
            version: 0x20f,
            init_size: 1234,
            ..Default::default()
        };
        let p = build_boot_params(Some(own), 1, None, &e820);
        let hdr = p.hdr;
        assert_eq!({ hdr.init_size }, 1234);
        assert_eq!({ hdr.ramdisk_size }, 0);
    }

    #[test]
    fn rejects_garbage_kernels() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
        let dir = std::env::temp_dir().join(format!("husk-boot-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk");
        std::fs::write(&junk, vec![0x5au8; 8192]).unwrap();
        assert!(matches!(
            load_kernel(&mem, &junk),
            Err(BootError::UnknownKernelFormat(_))
        ));
        let short = dir.join("short");
        std::fs::write(&short, b"\x7fE").unwrap();
        assert!(matches!(
            load_kernel(&mem, &short),
            Err(BootError::UnknownKernelFormat(_))
        ));
        let bad_elf = dir.join("bad-elf");
        let mut elf = b"\x7fELF".to_vec();
        elf.extend(vec![0u8; 100]);
        std::fs::write(&bad_elf, elf).unwrap();
        assert!(matches!(
            load_kernel(&mem, &bad_elf),
            Err(BootError::LoadKernel(..))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
