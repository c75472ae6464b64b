//! What `exec(2)` of a file reads next, from the file's first bytes: a
//! dynamically linked ELF program's interpreter (`PT_INTERP`), the libraries
//! it needs (`DT_NEEDED`) and where it says to look for them (`DT_RUNPATH`,
//! `DT_RPATH`); a script's `#!` interpreter. No I/O: the caller reads the
//! file and resolves the names ([`crate::fs`]'s entry-point warming).

use object::read::elf::{Dyn, FileHeader, ProgramHeader};
use object::{elf, Endianness, FileKind};

/// What starting a file will read after it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ExecDeps {
    /// The program interpreter: the dynamic loader, or a script's `#!` path.
    pub interpreter: Option<String>,
    /// Shared libraries by name (`libc.so.6`), in `DT_NEEDED` order.
    pub needed: Vec<String>,
    /// Directories the file names for its libraries (`$ORIGIN` left as is).
    pub search: Vec<String>,
}

/// The dependencies of a file whose content starts with `data` (all of an
/// ELF file is needed for its dynamic section; a script needs its first
/// line). `None` for anything else, or an ELF file that does not parse.
pub fn exec_deps(data: &[u8]) -> Option<ExecDeps> {
    if let Some(line) = data.strip_prefix(b"#!") {
        let line = line.split(|&b| b == b'\n').next()?;
        let line = std::str::from_utf8(line).ok()?.trim();
        let interp = line.split_whitespace().next()?;
        return Some(ExecDeps {
            interpreter: Some(interp.to_string()),
            ..ExecDeps::default()
        });
    }
    match FileKind::parse(data).ok()? {
        FileKind::Elf64 => elf_deps::<elf::FileHeader64<Endianness>>(data),
        FileKind::Elf32 => elf_deps::<elf::FileHeader32<Endianness>>(data),
        _ => None,
    }
}

fn elf_deps<H: FileHeader<Endian = Endianness>>(data: &[u8]) -> Option<ExecDeps> {
    let header = H::parse(data).ok()?;
    let endian = header.endian().ok()?;
    let mut out = ExecDeps::default();
    for ph in header.program_headers(endian, data).ok()? {
        if let Ok(Some(interp)) = ph.interpreter(endian, data) {
            out.interpreter = Some(String::from_utf8_lossy(interp).into_owned());
        }
    }
    let sections = header.sections(endian, data).ok()?;
    let Some((dynamic, link)) = sections.dynamic(endian, data).ok()? else {
        return Some(out);
    };
    let strings = sections.strings(endian, data, link).ok()?;
    for d in dynamic {
        let tag = d.tag32(endian);
        let text = || {
            d.string(endian, strings)
                .ok()
                .map(|s| String::from_utf8_lossy(s).into_owned())
        };
        match tag {
            Some(elf::DT_NEEDED) => out.needed.extend(text()),
            Some(elf::DT_RUNPATH | elf::DT_RPATH) => {
                if let Some(paths) = text() {
                    out.search
                        .extend(paths.split(':').filter(|p| !p.is_empty()).map(String::from));
                }
            }
            _ => {}
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_script_names_its_interpreter() {
        let d = exec_deps(b"#!/bin/sh -e\necho hi\n").unwrap();
        assert_eq!(d.interpreter.as_deref(), Some("/bin/sh"));
        assert!(d.needed.is_empty());
        let d = exec_deps(b"#! /usr/bin/env python3\n").unwrap();
        assert_eq!(d.interpreter.as_deref(), Some("/usr/bin/env"));
    }

    #[test]
    fn this_machines_programs_name_their_loader_and_libraries() {
        // The test binary itself: dynamically linked against libc.
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let d = exec_deps(&me).unwrap();
        let interp = d.interpreter.expect("a dynamic executable has PT_INTERP");
        assert!(interp.contains("ld-linux"), "{interp}");
        assert!(
            d.needed.iter().any(|n| n.starts_with("libc.so")),
            "{:?}",
            d.needed
        );
    }

    #[test]
    fn anything_else_has_none() {
        assert_eq!(exec_deps(b""), None);
        assert_eq!(exec_deps(b"\x7fELF garbage"), None);
        assert_eq!(exec_deps(b"plain text"), None);
        // An ELF file cut short keeps what its headers say or nothing, never panics.
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        for n in [16, 64, 100, 1000, 4096] {
            let _ = exec_deps(&me[..n.min(me.len())]);
        }
    }
}
