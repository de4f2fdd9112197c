//! husk-agent: PID 1 of the husk guest.
//!
//! For now the agent is a minimal init: it mounts the guest's file systems,
//! prints a ready line on the console, reaps orphans and powers the VM off
//! on request, and serves the agent API (`husk.agent.v1`) over ttrpc.
//!
//! - [`init`]: PID 1 duties (mounts, console, reaping, shutdown).
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
pub mod host;
pub mod init;
pub mod listen;
pub mod log;
pub mod network;
pub mod rpc;
pub mod sandbox;
pub mod stdio;
pub mod sys;
