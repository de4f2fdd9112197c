//! The husk agent API, `husk.agent.v1`. The .proto and its generated ttrpc code land with
//! the agent issue; this crate is where both the agent and the shim will build it from.
