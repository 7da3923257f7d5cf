//! What every test that runs wstrace needs, defined once:
//! - [`skip`]: the prerequisite gate (`require*`): a missing prerequisite
//!   fails the test, unless `WSTRACE_TEST_ALLOW_SKIP=1` turns it into a
//!   `SKIPPED: <test>: <why>` line;
//! - [`net`]: `free_port`, the upgrade request, `upgraded`, `upgrade_once`;
//! - [`process`]: the process-group guard (`Kill`) and `spawn_ready`;
//! - [`report`]: which connection and which end (server, client) a
//!   report is for;
//! - [`tracer`]: the one wstrace launcher (`Tracer`), ready by
//!   `--ready-file`, losses by `--metrics`;
//! - [`nobody`]: attacker processes as `nobody` with the system python3.
pub mod net;
pub mod nobody;
pub mod process;
pub mod report;
pub mod skip;
pub mod tracer;

pub use net::{UPGRADE, free_port, upgrade_once, upgraded, upgraded_with};
pub use process::{Kill, spawn_ready};
pub use skip::{
    ALLOW_SKIP, require, require_file, require_node_ws, require_ok, require_root,
    require_root_because, require_tool, require_venv_python,
};
pub use tracer::{SYMBOLIZE_TIMEOUT, Tracer, TracerOptions, target, wstrace_bin};
