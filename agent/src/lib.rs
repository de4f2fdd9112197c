//! husk-agent: PID 1 of the husk guest.
//!
//! The agent is the guest's init: it mounts the guest's file systems, prints a
//! ready line on the console, reaps orphans, serves the agent API
//! (`husk.agent.v1`) over ttrpc and the stdio and port-forward byte streams,
//! creates the pod's containers (libcontainer) and powers the VM off on request.
//!
//! Layers, each using only those below it: `init`/`host` (the two entry points)
//! -> `rpc` -> `sandbox` -> `container`, `stdio`, `forward`, `network` -> `listen`,
//! `reaper`, `sys`, `log`, `config`.
//!
//! - [`init`]: PID 1 duties (mounts, console, signals, shutdown).
//! - [`reaper`]: children's exits (`waitpid(-1)` in one place) for PID 1, the
//!   containers and `husk-agent serve`.
//! - [`config`]: `husk.*` keys of the kernel command line.
//! - [`container`]: the container engine (OCI spec + rootfs, on libcontainer).
//! - [`log`]: leveled log lines to the console and /dev/kmsg.
//! - [`network`]: UpdateNetwork, the guest's links, addresses and routes.
//! - [`rpc`]: the `husk.agent.v1` ttrpc server (vsock in the guest, Unix
//!   socket on the host).
//! - [`sandbox`]: the containers and processes the RPCs act on.
//! - [`stdio`]: per-process standard streams on the stdio port.
//! - [`forward`]: forwarded TCP connections on the port-forward port.
//! - [`listen`]: the listen addresses and stream listeners of all three ports.
//! - [`host`]: `husk-agent serve`, the agent on the host for tests.
//! - [`sys`]: the raw system calls, wrapped.

pub mod config;
pub mod container;
pub mod forward;
pub mod free_memory;
pub mod host;
pub mod init;
pub mod listen;
pub mod log;
pub mod network;
pub mod reaper;
pub mod rpc;
pub mod sandbox;
pub mod stdio;
pub mod sys;
