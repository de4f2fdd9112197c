//! Generates the Rust code of `husk.agent.v1` from proto/agent.proto with the
//! pure-Rust parser of ttrpc-codegen (no protoc), into OUT_DIR.

use std::path::PathBuf;
use std::{env, fs};

use ttrpc_codegen::{Codegen, Customize, ProtobufCustomize};

const PROTO: &str = "proto/agent.proto";

fn main() {
    println!("cargo:rerun-if-changed={PROTO}");
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));

    Codegen::new()
        .out_dir(&out_dir)
        .input(PROTO)
        .include("proto")
        .rust_protobuf()
        .rust_protobuf_customize(
            ProtobufCustomize::default()
                .gen_mod_rs(false)
                .generate_accessors(true),
        )
        // Sync client and server: the agent serves with ttrpc's thread-based
        // server, so neither side needs tokio from this crate.
        .customize(Customize {
            async_all: false,
            async_client: false,
            async_server: false,
            gen_mod: false,
        })
        .run()
        .expect("Failed to generate code from proto/agent.proto");

    // `agent.rs` (messages) and `agent_ttrpc.rs` (client, service trait),
    // included by src/lib.rs.
    fs::write(
        out_dir.join("mod.rs"),
        "pub mod agent;\npub mod agent_ttrpc;\n",
    )
    .expect("Failed to write mod.rs");
}
