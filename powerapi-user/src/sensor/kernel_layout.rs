//! Where the run queue's clock sits in this kernel's structures, from its BTF.
//!
//! The switch path's one expensive step was the clock helper (`bpf_ktime_get_ns`: a call, an
//! indirect call and a serialising TSC read). When `sched_switch` fires, `__schedule` has just
//! updated the run queue's clock, which a `tp_btf` program reaches with plain loads:
//! `prev->se.cfs_rq->rq->clock`. aya has no CO-RE for Rust programs, so the three offsets are
//! read here from `/sys/kernel/btf/vmlinux` and handed to the program as load-time constants;
//! the verifier checks each load against the same BTF, so a wrong offset is refused at load,
//! never read.

use btf_rs::{Backend, Btf, Member, Struct, Type};

/// Why the run queue's clock cannot be reached on this kernel (the sensor then reads the clock
/// helper on every switch, as on kernels without BTF).
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// The BTF could not be read or parsed.
    #[error("kernel BTF unreadable: {0}")]
    Btf(String),
    /// A structure or field is absent (`CONFIG_FAIR_GROUP_SCHED` off, or a renamed field).
    #[error("{0} not found in the kernel's BTF")]
    Missing(String),
    /// A field exists with another type than the path needs.
    #[error("{0} is not {1} in the kernel's BTF")]
    Unexpected(String, &'static str),
}

/// Byte offsets of the loads the switch path makes from the `prev` `task_struct`: its pid (the
/// key of the CPU's cache of recent threads), and the three loads to its run queue's clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RqClockPath {
    /// `task_struct.pid` (a 32-bit integer).
    pub task_pid: u64,
    /// `task_struct.se.cfs_rq` (a pointer to the entity's `cfs_rq`).
    pub se_cfs_rq: u64,
    /// `cfs_rq.rq` (a pointer to the CPU's `rq`).
    pub cfs_rq_rq: u64,
    /// `rq.clock` (u64 ns, `sched_clock_cpu`).
    pub rq_clock: u64,
}

/// Reads the running kernel's BTF and finds the path.
pub fn running_kernel() -> Result<RqClockPath, LayoutError> {
    const VMLINUX: &str = "/sys/kernel/btf/vmlinux";
    // Mapped, a few lookups cost a few ms; parsing all ~100,000 types first costs ~100 ms of
    // start-up. Kernels that cannot map the file get the parse.
    let btf = Btf::from_file_with_backend(VMLINUX, Backend::Mmap)
        .or_else(|_| Btf::from_file(VMLINUX))
        .map_err(|e| LayoutError::Btf(e.to_string()))?;
    rq_clock_path(&btf)
}

/// The offsets of `task_struct.se.cfs_rq`, `cfs_rq.rq` and `rq.clock`, each checked for the
/// type the walk needs.
pub fn rq_clock_path(btf: &Btf) -> Result<RqClockPath, LayoutError> {
    let (se, se_type) = member(btf, "task_struct", "se")?;
    struct_name(btf, &se_type, "sched_entity", "task_struct.se")?;
    let (cfs_rq, cfs_rq_type) = member(btf, "sched_entity", "cfs_rq")?;
    pointee(btf, &cfs_rq_type, "cfs_rq", "sched_entity.cfs_rq")?;
    let (rq, rq_type) = member(btf, "cfs_rq", "rq")?;
    pointee(btf, &rq_type, "rq", "cfs_rq.rq")?;
    let (clock, clock_type) = member(btf, "rq", "clock")?;
    match clock_type {
        Type::Int(int) if int.size() == 8 => {}
        _ => {
            return Err(LayoutError::Unexpected(
                "rq.clock".into(),
                "a 64-bit integer",
            ));
        }
    }
    let (pid, pid_type) = member(btf, "task_struct", "pid")?;
    match pid_type {
        Type::Int(int) if int.size() == 4 => {}
        _ => {
            return Err(LayoutError::Unexpected(
                "task_struct.pid".into(),
                "a 32-bit integer",
            ));
        }
    }
    Ok(RqClockPath {
        task_pid: pid,
        se_cfs_rq: se + cfs_rq,
        cfs_rq_rq: rq,
        rq_clock: clock,
    })
}

/// The struct of that name with members (a forward declaration has none).
fn named_struct(btf: &Btf, name: &str) -> Result<Struct, LayoutError> {
    btf.resolve_types_by_name(name)
        .map_err(|_| LayoutError::Missing(format!("struct {name}")))?
        .into_iter()
        .find_map(|t| match t {
            Type::Struct(s) if !s.members.is_empty() => Some(s),
            _ => None,
        })
        .ok_or_else(|| LayoutError::Missing(format!("struct {name}")))
}

/// Byte offset and (unqualified) type of `owner.field`, looking through anonymous structs and
/// unions, as C does.
fn member(btf: &Btf, owner: &str, field: &str) -> Result<(u64, Type), LayoutError> {
    let missing = || LayoutError::Missing(format!("{owner}.{field}"));
    let (bits, found) = find_member(btf, &named_struct(btf, owner)?, field).ok_or_else(missing)?;
    if found.bitfield_size().is_some_and(|size| size != 0) || bits % 8 != 0 {
        return Err(LayoutError::Unexpected(
            format!("{owner}.{field}"),
            "a byte-aligned field",
        ));
    }
    let found_type = btf.resolve_chained_type(&found).map_err(|_| missing())?;
    Ok((u64::from(bits / 8), unqualified(btf, found_type)))
}

fn find_member(btf: &Btf, owner: &Struct, field: &str) -> Option<(u32, Member)> {
    for m in &owner.members {
        let name = btf.resolve_name(m).unwrap_or_default();
        if name == field {
            return Some((m.bit_offset(), m.clone()));
        }
        if name.is_empty() {
            let inner = match btf
                .resolve_chained_type(m)
                .ok()
                .map(|t| unqualified(btf, t))
            {
                Some(Type::Struct(s) | Type::Union(s)) => s,
                _ => continue,
            };
            if let Some((bits, found)) = find_member(btf, &inner, field) {
                return Some((m.bit_offset() + bits, found));
            }
        }
    }
    None
}

/// The type behind typedefs and qualifiers.
fn unqualified(btf: &Btf, mut t: Type) -> Type {
    for _ in 0..16 {
        let next = match &t {
            Type::Typedef(x) => btf.resolve_chained_type(x),
            Type::Const(x) => btf.resolve_chained_type(x),
            Type::Volatile(x) => btf.resolve_chained_type(x),
            Type::Restrict(x) => btf.resolve_chained_type(x),
            Type::TypeTag(x) => btf.resolve_chained_type(x),
            _ => return t,
        };
        match next {
            Ok(n) => t = n,
            Err(_) => return t,
        }
    }
    t
}

fn struct_name(btf: &Btf, t: &Type, want: &str, what: &str) -> Result<(), LayoutError> {
    match t {
        Type::Struct(s) if btf.resolve_name(s).is_ok_and(|n| n == want) => Ok(()),
        _ => Err(LayoutError::Unexpected(what.into(), "the expected struct")),
    }
}

fn pointee(btf: &Btf, t: &Type, want: &str, what: &str) -> Result<(), LayoutError> {
    let Type::Ptr(ptr) = t else {
        return Err(LayoutError::Unexpected(what.into(), "a pointer"));
    };
    let target = btf
        .resolve_chained_type(ptr)
        .map(|t| unqualified(btf, t))
        .map_err(|_| LayoutError::Unexpected(what.into(), "a pointer to a struct"))?;
    match target {
        // A pointer to a struct declared later may point at its forward declaration.
        Type::Struct(s) if btf.resolve_name(&s).is_ok_and(|n| n == want) => Ok(()),
        Type::Fwd(f) if btf.resolve_name(&f).is_ok_and(|n| n == want) => Ok(()),
        _ => Err(LayoutError::Unexpected(
            what.into(),
            "a pointer to the expected struct",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal BTF blob: `types` are (name, kind, vlen, size_or_type, extra words).
    fn blob(strings: &[&str], types: &[(u32, u32, u32, u32, Vec<u32>)]) -> Vec<u8> {
        let mut strs = vec![0u8];
        for s in strings {
            strs.extend_from_slice(s.as_bytes());
            strs.push(0);
        }
        let mut body = Vec::new();
        for (name, kind, vlen, size_or_type, extra) in types {
            for word in [*name, (kind << 24) | vlen, *size_or_type]
                .iter()
                .chain(extra)
            {
                body.extend_from_slice(&word.to_le_bytes());
            }
        }
        let mut out = Vec::new();
        out.extend_from_slice(&0xeb9fu16.to_le_bytes());
        out.extend_from_slice(&[1, 0]);
        for word in [
            24u32,
            0,
            body.len() as u32,
            body.len() as u32,
            strs.len() as u32,
        ] {
            out.extend_from_slice(&word.to_le_bytes());
        }
        out.extend_from_slice(&body);
        out.extend_from_slice(&strs);
        out
    }

    /// Offset of `name` in the string table built by `blob`.
    fn at(strings: &[&str], name: &str) -> u32 {
        let mut offset = 1;
        for s in strings {
            if *s == name {
                return offset;
            }
            offset += s.len() as u32 + 1;
        }
        panic!("{name} not in the table")
    }

    const INT: u32 = 1;
    const PTR: u32 = 2;
    const STRUCT: u32 = 4;
    const UNION: u32 = 5;
    const FWD: u32 = 7;
    const TYPEDEF: u32 = 8;
    const VOLATILE: u32 = 9;
    const CONST: u32 = 10;
    const RESTRICT: u32 = 11;
    const TYPE_TAG: u32 = 18;

    /// task_struct { se @ 64 } → sched_entity { cfs_rq @ 16 } → cfs_rq { rq @ 8 }
    /// → rq { union { clock @ 32 } @ 8 }: the clock inside an anonymous union, as C allows;
    /// task_struct { pid @ 12 } through a typedef.
    fn kernel(clock_name: &str) -> Btf {
        kernel_with(clock_name, |_, _| {})
    }

    type Types = Vec<(u32, u32, u32, u32, Vec<u32>)>;
    type Edit = fn(&[&str], &mut Types);

    /// `kernel`, with `edit` applied to its types first. Extra types for edits to point at:
    /// 11 `const u64`, 12 `volatile` → 13 type tag → 14 `restrict` → `int`, 15 struct `other`,
    /// 16 pointer to it, 17 forward `rq`, 18 pointer to it, 19 `u32`, 20 forward `other`,
    /// 21 pointer to it.
    fn kernel_with(clock_name: &str, edit: impl FnOnce(&[&str], &mut Types)) -> Btf {
        let s = [
            "u64",
            "rq",
            clock_name,
            "cfs_rq",
            "sched_entity",
            "task_struct",
            "se",
            "pid_t",
            "int",
            "pid",
            "other",
            "user",
            "u32",
        ];
        let mut types = vec![
            (at(&s, "u64"), INT, 0, 8, vec![64]),                // 1
            (0, UNION, 1, 40, vec![at(&s, clock_name), 1, 256]), // 2
            (at(&s, "rq"), STRUCT, 1, 64, vec![0, 2, 64]),       // 3
            (0, PTR, 0, 3, vec![]),                              // 4
            (at(&s, "cfs_rq"), STRUCT, 1, 32, vec![at(&s, "rq"), 4, 64]), // 5
            (0, PTR, 0, 5, vec![]),                              // 6
            (
                at(&s, "sched_entity"),
                STRUCT,
                1,
                64,
                vec![at(&s, "cfs_rq"), 6, 128],
            ), // 7
            (at(&s, "int"), INT, 0, 4, vec![(1 << 24) | 32]),    // 8
            (at(&s, "pid_t"), TYPEDEF, 0, 8, vec![]),            // 9
            (
                at(&s, "task_struct"),
                STRUCT,
                2,
                128,
                vec![at(&s, "pid"), 9, 96, at(&s, "se"), 7, 512],
            ), // 10
            (0, CONST, 0, 1, vec![]),                            // 11
            (0, VOLATILE, 0, 13, vec![]),                        // 12
            (at(&s, "user"), TYPE_TAG, 0, 14, vec![]),           // 13
            (0, RESTRICT, 0, 8, vec![]),                         // 14
            (at(&s, "other"), STRUCT, 1, 8, vec![at(&s, "pid"), 1, 0]), // 15
            (0, PTR, 0, 15, vec![]),                             // 16
            (at(&s, "rq"), FWD, 0, 0, vec![]),                   // 17
            (0, PTR, 0, 17, vec![]),                             // 18
            (at(&s, "u32"), INT, 0, 4, vec![32]),                // 19
            (at(&s, "other"), FWD, 0, 0, vec![]),                // 20
            (0, PTR, 0, 20, vec![]),                             // 21
        ];
        edit(&s, &mut types);
        Btf::from_bytes(&blob(&s, &types)).expect("a valid blob")
    }

    /// Index into `kernel`'s types of type id `id`.
    fn ty(id: usize) -> usize {
        id - 1
    }

    #[test]
    fn qualifiers_and_forward_declarations_are_looked_through() {
        let btf = kernel_with("clock", |_, t| {
            t[ty(2)].4[1] = 11; // const u64 clock
            t[ty(10)].4[1] = 12; // volatile, tagged, restrict int pid
            t[ty(5)].4[1] = 18; // cfs_rq.rq: a pointer to the forward-declared rq
        });
        assert_eq!(rq_clock_path(&btf).expect("found"), EXPECTED);
    }

    #[test]
    fn fields_of_another_type_are_refused_by_name() {
        let refused = |edit: Edit| {
            rq_clock_path(&kernel_with("clock", edit))
                .expect_err("refused")
                .to_string()
        };
        let cases: [(Edit, &str); 8] = [
            (
                |_, t| t[ty(2)].4[1] = 19,
                "rq.clock is not a 64-bit integer",
            ),
            (
                |_, t| t[ty(10)].4[1] = 1,
                "task_struct.pid is not a 32-bit integer",
            ),
            (
                |_, t| t[ty(5)].4[1] = 16,
                "cfs_rq.rq is not a pointer to the expected struct",
            ),
            (
                |_, t| t[ty(5)].4[1] = 21,
                "cfs_rq.rq is not a pointer to the expected struct",
            ),
            (|_, t| t[ty(5)].4[1] = 3, "cfs_rq.rq is not a pointer"),
            (
                |_, t| t[ty(7)].4[1] = 16,
                "sched_entity.cfs_rq is not a pointer to the expected struct",
            ),
            (
                |_, t| t[ty(10)].4[4] = 15,
                "task_struct.se is not the expected struct",
            ),
            // A bitfield (kind flag, 8 bits at bit 96).
            (
                |_, t| {
                    t[ty(10)].1 |= 0x80;
                    t[ty(10)].4[2] = (8 << 24) | 96;
                },
                "task_struct.pid is not a byte-aligned field",
            ),
        ];
        for (edit, message) in cases {
            assert_eq!(refused(edit), format!("{message} in the kernel's BTF"));
        }
        // Not on a byte boundary.
        assert_eq!(
            refused(|_, t| t[ty(10)].4[2] = 100),
            "task_struct.pid is not a byte-aligned field in the kernel's BTF"
        );
    }

    /// Where `kernel`'s fields are.
    const EXPECTED: RqClockPath = RqClockPath {
        task_pid: 12,
        se_cfs_rq: 64 + 16,
        cfs_rq_rq: 8,
        rq_clock: 8 + 32,
    };

    #[test]
    fn offsets_add_up_through_nested_and_anonymous_members() {
        assert_eq!(rq_clock_path(&kernel("clock")).expect("found"), EXPECTED);
    }

    #[test]
    fn a_missing_field_is_named() {
        let err = rq_clock_path(&kernel("clock_task")).expect_err("no rq.clock");
        assert_eq!(err.to_string(), "rq.clock not found in the kernel's BTF");
    }

    #[test]
    fn the_running_kernel_has_the_path_when_it_has_btf() {
        if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
            eprintln!("skipped: no /sys/kernel/btf/vmlinux");
            return;
        }
        let path = running_kernel().expect("this kernel's layout");
        // Each offset lies inside its struct (task_struct is a few KiB, rq a few more).
        assert!(path.se_cfs_rq > 0 && path.se_cfs_rq < 16384, "{path:?}");
        assert!(path.rq_clock > 0 && path.rq_clock < 16384, "{path:?}");
    }
}
