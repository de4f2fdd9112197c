//! husk-jailer: how a pod's husk-vmm is confined before it runs (SECURITY.md, "The jail").
//!
//! The shim starts `husk-jailer` (as root) with a [`Jail`]; the jailer joins the pod's
//! cgroup, unshares new mount, PID, IPC, UTS and network namespaces, forks the process that
//! becomes PID 1 of the new PID namespace, and there: mounts a small tmpfs as the jail's
//! root holding only what the VM needs (a `/dev/kvm` node of its own, the kernel and
//! initramfs read-only, the VMM binary, the pod's `vm` directory as `/run`), pivots into
//! it, drops every capability from the bounding set, takes an unprivileged uid/gid, sets
//! rlimits and no_new_privs, closes every fd it was not told to keep, clears the
//! environment and execs husk-vmm. The jailer prints the VMM's pid (as the shim's PID
//! namespace sees it) and exits; the VMM is then the shim's child (it is the subreaper).
//!
//! The model is Firecracker's jailer; the differences are ours: a tmpfs root (device nodes
//! work whatever the state dir's mount flags, and nothing is left on the host to clean),
//! bind mounts instead of hard links (the kernel and the image stay where they are), a new
//! network namespace always (the VMM reaches the pod network only through the tap fds it is
//! handed), and the read-only root.
//!
//! [`Jail`] is the one home of the command-line contract: the shim builds it, the jailer
//! parses it back ([`Jail::to_args`], [`Jail::from_args`]).

pub mod cgroup;
pub mod confine;
pub mod elf;
mod spec;

pub use spec::{Bind, Jail, SpecError, DEFAULT_NOFILE, DEFAULT_NPROC};
