//! Finding a program by name in the loaded eBPF object, as its type
//! (`KProbe`, `UProbe`, ...): the one lookup the probe sets, the TLS uprobes
//! and the benchmark floor share. Each caller maps [`LookupError`] into its
//! own error type.
use std::fmt;

use aya::{
    Ebpf,
    programs::{Program, ProgramError},
};

/// Why [`program`] found no program of the wanted type.
#[derive(Debug)]
pub enum LookupError {
    /// The object has no program of that name: it was built from other
    /// sources than this binary.
    Missing(String),
    /// It has one, of another type than the caller asked for.
    WrongType(String, ProgramError),
}

impl fmt::Display for LookupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing(name) => write!(f, "program {name} missing from the eBPF object"),
            Self::WrongType(name, _) => write!(f, "program {name} has an unexpected type"),
        }
    }
}

impl std::error::Error for LookupError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Missing(_) => None,
            Self::WrongType(_, e) => Some(e),
        }
    }
}

/// The program `name` of `ebpf`, as a `T`.
pub fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, LookupError>
where
    &'a mut T: TryFrom<&'a mut Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| LookupError::Missing(name.to_string()))?
        .try_into()
        .map_err(|e| LookupError::WrongType(name.to_string(), e))
}
