//! uAPI levels: whose semantics the ioctl layer has, chosen with `uiommu run --kernel VERSION`,
//! `uiommu serve --kernel VERSION` or `UIOMMU_KERNEL` (docs/abi.md, "uAPI levels").
//!
//! [`Level::Linux612`] is Linux 6.12.y: what came later is refused as 6.12 refuses it.
//! [`Level::Linux612Plus`], the default, is the same plus the later pieces the 6.12 stable
//! tree's own selftest uses. The level is one per process (the engine's), read by the
//! handlers with [`current`].

use std::sync::atomic::{AtomicU8, Ordering};

/// A uAPI level.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Level {
    /// Linux 6.12.y exactly: `IOMMU_GET_HW_INFO` takes no flags (EOPNOTSUPP), mock devices
    /// take no `MOCK_FLAGS_DEVICE_PASID` (EINVAL), as in 6.12.
    Linux612,
    /// Linux 6.12.y plus the later uAPI the 6.12 stable tree's selftest sends:
    /// `IOMMU_HW_INFO_FLAG_INPUT_TYPE` (with `in_data_type` in the `out_data_type` slot) and
    /// PASID-capable mock devices (`MOCK_FLAGS_DEVICE_PASID`).
    Linux612Plus,
}

impl Level {
    /// Every level, oldest first.
    pub const ALL: [Level; 2] = [Level::Linux612, Level::Linux612Plus];

    /// The default level.
    pub const DEFAULT: Level = Level::Linux612Plus;

    /// Its name, as `--kernel` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Level::Linux612 => "6.12",
            Level::Linux612Plus => "6.12+",
        }
    }

    /// One line on what it is.
    pub fn describe(self) -> &'static str {
        match self {
            Level::Linux612 => "Linux 6.12.y; what came later is refused as 6.12 refuses it",
            Level::Linux612Plus => {
                "Linux 6.12.y plus the later uAPI the 6.12 stable selftest uses \
                 (IOMMU_HW_INFO_FLAG_INPUT_TYPE, MOCK_FLAGS_DEVICE_PASID)"
            }
        }
    }

    /// The level a `--kernel` value names: `6.12` (or `6.12.y`, `6.12.N`) and `6.12+`.
    pub fn parse(s: &str) -> Option<Level> {
        match s {
            "6.12+" => Some(Level::Linux612Plus),
            "6.12" | "6.12.y" => Some(Level::Linux612),
            _ => s
                .strip_prefix("6.12.")
                .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                .map(|_| Level::Linux612),
        }
    }

    /// The level `UIOMMU_KERNEL` names (the default when unset or empty); the message for a
    /// value that names none.
    pub fn from_env() -> Result<Level, String> {
        match std::env::var("UIOMMU_KERNEL") {
            Err(_) => Ok(Level::DEFAULT),
            Ok(v) if v.is_empty() => Ok(Level::DEFAULT),
            Ok(v) => Level::parse(&v)
                .ok_or_else(|| format!("UIOMMU_KERNEL={v}: not a uAPI level ({})", Level::names())),
        }
    }

    /// The levels' names, for messages: `6.12, 6.12+`.
    pub fn names() -> String {
        Level::ALL
            .iter()
            .map(|l| l.name())
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn code(self) -> u8 {
        match self {
            Level::Linux612 => 0,
            Level::Linux612Plus => 1,
        }
    }
}

static LEVEL: AtomicU8 = AtomicU8::new(1);

/// The level in force in this process.
pub fn current() -> Level {
    match LEVEL.load(Ordering::Relaxed) {
        0 => Level::Linux612,
        _ => Level::Linux612Plus,
    }
}

/// Put `level` in force for this process (the engine's handlers read it at each call).
pub fn set(level: Level) {
    LEVEL.store(level.code(), Ordering::Relaxed);
}

/// Whether the level in force has the later pieces beyond Linux 6.12.
pub fn beyond_6_12() -> bool {
    current() != Level::Linux612
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_and_versions_of_6_12_are_6_12() {
        for l in Level::ALL {
            assert_eq!(Level::parse(l.name()), Some(l));
        }
        assert_eq!(Level::parse("6.12.117"), Some(Level::Linux612));
        assert_eq!(Level::parse("6.12.y"), Some(Level::Linux612));
        for bad in ["", "6.1", "6.13", "6.12.", "6.12.x", "latest"] {
            assert_eq!(Level::parse(bad), None, "{bad}");
        }
        assert_eq!(Level::DEFAULT.code(), 1);
        assert_eq!(current(), Level::DEFAULT);
    }
}
