//! Struct member offsets from the kernel's BTF (`/sys/kernel/btf/vmlinux`), for the kernel
//! structures the programs read with `bpf_probe_read_kernel` rather than through a stable
//! context: the connect hook's `struct bpf_sock_addr_kern` (see `tssx-ebpf`'s `connect_unix`).
//!
//! Only what that needs is parsed: the header, the type section (to find a struct by name and
//! the kind of each member's type) and the string section. The format is the kernel's
//! `Documentation/bpf/btf.rst`; the types are numbered from 1 in the order they appear.

use thiserror::Error;

/// Where the running kernel publishes its own BTF.
pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xeb9f;
const HEADER_LEN: usize = 24;

/// BTF kinds (`BTF_KIND_*`) this module tells apart.
const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_TYPE_TAG: u32 = 18;

/// Why a member's offset could not be read.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum BtfError {
    /// Not a BTF blob this parser understands (bad magic, truncated sections).
    #[error("malformed BTF: {0}")]
    Malformed(&'static str),
    /// A type kind whose size this parser does not know (a newer BTF version).
    #[error("unknown BTF type kind {0}")]
    UnknownKind(u32),
    /// No struct of that name.
    #[error("the kernel's BTF has no struct {0}")]
    NoStruct(String),
    /// The struct has no such member, or it is a bit field.
    #[error("struct {0} has no byte-aligned member {1}")]
    NoMember(String, String),
    /// The member's type is not what the programs read there.
    #[error("struct {0} member {1} is not {2}")]
    WrongType(String, String, &'static str),
}

/// What the programs read at a member: a pointer, or an integer of a given size in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// A pointer (8 bytes on the targets tssx supports).
    Pointer,
    /// An integer of this many bytes.
    Int(u32),
}

impl Expect {
    fn describe(self) -> &'static str {
        match self {
            Expect::Pointer => "a pointer",
            Expect::Int(4) => "a 4-byte integer",
            Expect::Int(_) => "an integer of the expected size",
        }
    }
}

/// One type of the type section: its kind, `size`/`type` word, and where its extra data is.
#[derive(Clone, Copy)]
struct Type {
    name_off: u32,
    kind: u32,
    vlen: u32,
    kind_flag: bool,
    size_or_type: u32,
    /// Byte offset of the kind-specific data in the type section.
    extra: usize,
}

/// A parsed BTF blob (little-endian, as on the machines tssx runs on).
pub struct Btf<'a> {
    types: Vec<Type>,
    type_section: &'a [u8],
    strings: &'a [u8],
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at.checked_add(4)?)?.try_into().ok()?))
}

impl<'a> Btf<'a> {
    /// Parses `blob` (the contents of [`VMLINUX`]).
    pub fn parse(blob: &'a [u8]) -> Result<Self, BtfError> {
        let magic = blob.get(..2).map(|m| u16::from_le_bytes([m[0], m[1]]));
        if magic != Some(MAGIC) {
            return Err(BtfError::Malformed("no BTF magic"));
        }
        let word = |at: usize| u32_at(blob, at).map(|w| w as usize).ok_or(BtfError::Malformed("truncated header"));
        let hdr_len = word(4)?;
        if hdr_len < HEADER_LEN {
            return Err(BtfError::Malformed("header too short"));
        }
        let (type_off, type_len, str_off, str_len) = (word(8)?, word(12)?, word(16)?, word(20)?);
        let section = |off: usize, len: usize| {
            let start = hdr_len.checked_add(off).ok_or(BtfError::Malformed("section offset"))?;
            blob.get(start..start.checked_add(len).ok_or(BtfError::Malformed("section length"))?)
                .ok_or(BtfError::Malformed("truncated section"))
        };
        let type_section = section(type_off, type_len)?;
        let strings = section(str_off, str_len)?;
        let mut types = Vec::new();
        let mut at = 0;
        while at < type_section.len() {
            let field = |k: usize| u32_at(type_section, at + 4 * k).ok_or(BtfError::Malformed("truncated type"));
            let (name_off, info, size_or_type) = (field(0)?, field(1)?, field(2)?);
            let kind = (info >> 24) & 0x1f;
            let vlen = info & 0xffff;
            let extra = at + 12;
            let extra_len = match kind {
                KIND_INT | 14 | 17 => 4,                         // INT, VAR, DECL_TAG
                3 => 12,                                         // ARRAY
                KIND_STRUCT | KIND_UNION | 15 | 19 => 12 * vlen, // members, DATASEC, ENUM64
                6 | 13 => 8 * vlen,                              // ENUM, FUNC_PROTO
                KIND_PTR | 7 | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | 12 | 16 | KIND_TYPE_TAG => 0,
                other => return Err(BtfError::UnknownKind(other)),
            } as usize;
            types.push(Type { name_off, kind, vlen, kind_flag: info >> 31 != 0, size_or_type, extra });
            at = extra + extra_len;
        }
        Ok(Self { types, type_section, strings })
    }

    fn name(&self, off: u32) -> &[u8] {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        &rest[..rest.iter().position(|&b| b == 0).unwrap_or(rest.len())]
    }

    /// Type `id` (1-based; 0 is `void`).
    fn by_id(&self, id: u32) -> Option<&Type> {
        self.types.get((id as usize).checked_sub(1)?)
    }

    /// Type `id` with typedefs and qualifiers followed (at most a few levels deep).
    fn resolved(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..16 {
            let t = self.by_id(id)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => id = t.size_or_type,
                _ => return Some(t),
            }
        }
        None
    }

    /// The byte offset of `member` in the struct named `name`, checked to be `expect`.
    pub fn member_offset(&self, name: &str, member: &str, expect: Expect) -> Result<u32, BtfError> {
        let strukt = self
            .types
            .iter()
            .find(|t| t.kind == KIND_STRUCT && self.name(t.name_off) == name.as_bytes())
            .ok_or_else(|| BtfError::NoStruct(name.to_owned()))?;
        let no_member = || BtfError::NoMember(name.to_owned(), member.to_owned());
        for i in 0..strukt.vlen as usize {
            let at = strukt.extra + 12 * i;
            let field = |k: usize| u32_at(self.type_section, at + 4 * k).ok_or(BtfError::Malformed("truncated member"));
            let (name_off, type_id, offset) = (field(0)?, field(1)?, field(2)?);
            if self.name(name_off) != member.as_bytes() {
                continue;
            }
            // With the kind flag, the low 24 bits are the offset and the high 8 a bit field's size.
            let (bits, bitfield) = if strukt.kind_flag { (offset & 0xff_ffff, offset >> 24) } else { (offset, 0) };
            if bitfield != 0 || bits % 8 != 0 {
                return Err(no_member());
            }
            let fits = match (self.resolved(type_id), expect) {
                (Some(t), Expect::Pointer) => t.kind == KIND_PTR,
                (Some(t), Expect::Int(size)) => t.kind == KIND_INT && t.size_or_type == size,
                (None, _) => false,
            };
            if !fits {
                return Err(BtfError::WrongType(name.to_owned(), member.to_owned(), expect.describe()));
            }
            return Ok(bits / 8);
        }
        Err(no_member())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob: `types` (each a list of words) and `strings` (NUL-separated, starting with
    /// the empty name).
    fn blob(types: &[Vec<u32>], strings: &[u8]) -> Vec<u8> {
        let type_bytes: Vec<u8> = types.iter().flatten().flat_map(|w| w.to_le_bytes()).collect();
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.extend_from_slice(&[1, 0]);
        for w in [HEADER_LEN as u32, 0, type_bytes.len() as u32, type_bytes.len() as u32, strings.len() as u32] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.extend_from_slice(&type_bytes);
        out.extend_from_slice(strings);
        out
    }

    fn info(kind: u32, vlen: u32) -> u32 {
        kind << 24 | vlen
    }

    // Strings: 1 "int", 5 "u32", 9 "s", 11 "p", 13 "n", 15 "b", 17 "other".
    const STRINGS: &[u8] = b"\0int\0u32\0s\0p\0n\0b\0other\0";

    fn sample() -> Vec<u8> {
        blob(
            &[
                vec![1, info(KIND_INT, 0), 4, 32],                                    // 1: int, 4 bytes
                vec![5, info(KIND_TYPEDEF, 0), 1],                                    // 2: typedef u32 -> int
                vec![0, info(KIND_PTR, 0), 1],                                        // 3: int *
                vec![0, info(KIND_CONST, 0), 2],                                      // 4: const u32
                vec![0, info(6, 2), 4, 17, 0, 17, 1],                                 // 5: an enum of 2 (skipped over)
                vec![9, info(KIND_STRUCT, 3), 24, 11, 3, 64, 13, 4, 128, 15, 1, 160], // 6: struct s
            ],
            STRINGS,
        )
    }

    #[test]
    fn member_offsets_are_read_through_typedefs_and_qualifiers() {
        let data = sample();
        let btf = Btf::parse(&data).unwrap();
        assert_eq!(btf.member_offset("s", "p", Expect::Pointer), Ok(8));
        assert_eq!(btf.member_offset("s", "n", Expect::Int(4)), Ok(16));
        assert_eq!(btf.member_offset("s", "b", Expect::Int(4)), Ok(20));
    }

    #[test]
    fn what_is_missing_or_different_is_an_error() {
        let data = sample();
        let btf = Btf::parse(&data).unwrap();
        assert_eq!(btf.member_offset("other", "p", Expect::Pointer), Err(BtfError::NoStruct("other".into())));
        assert_eq!(btf.member_offset("s", "other", Expect::Pointer), Err(BtfError::NoMember("s".into(), "other".into())));
        assert!(matches!(btf.member_offset("s", "n", Expect::Pointer), Err(BtfError::WrongType(..))));
        assert!(matches!(btf.member_offset("s", "p", Expect::Int(4)), Err(BtfError::WrongType(..))));
        assert!(matches!(btf.member_offset("s", "n", Expect::Int(8)), Err(BtfError::WrongType(..))));
        assert!(matches!(Btf::parse(b"not btf at all, not at all"), Err(BtfError::Malformed(_))));
        let mut cut = sample();
        cut.truncate(cut.len() - 10);
        assert!(matches!(Btf::parse(&cut), Err(BtfError::Malformed(_))));
        let unknown = blob(&[vec![0, info(31, 0), 0]], STRINGS);
        assert_eq!(Btf::parse(&unknown).err(), Some(BtfError::UnknownKind(31)));
    }

    #[test]
    fn a_bit_field_member_is_not_an_offset() {
        // Kind flag: offset 0x0400_0040 = a 4-bit field at bit 64.
        let data = blob(&[vec![1, info(KIND_INT, 0), 4, 32], vec![9, info(KIND_STRUCT, 1) | 1 << 31, 16, 13, 1, 0x0400_0040]], STRINGS);
        let btf = Btf::parse(&data).unwrap();
        assert_eq!(btf.member_offset("s", "n", Expect::Int(4)), Err(BtfError::NoMember("s".into(), "n".into())));
    }

    /// The running kernel's own BTF, where it has one: the connect hook's struct is found, its
    /// two members where the programs expect their kinds.
    #[test]
    fn the_running_kernel_describes_the_connect_hook_context() {
        let Ok(data) = std::fs::read(VMLINUX) else { return };
        let btf = Btf::parse(&data).expect("the kernel's own BTF parses");
        match btf.member_offset("bpf_sock_addr_kern", "uaddr", Expect::Pointer) {
            Err(BtfError::NoStruct(_)) => {} // a kernel without the struct (before BPF sock_addr hooks)
            other => {
                let uaddr = other.expect("uaddr is a pointer");
                let len = btf.member_offset("bpf_sock_addr_kern", "uaddrlen", Expect::Int(4)).expect("uaddrlen is a u32");
                assert_ne!(uaddr, len);
            }
        }
    }
}
