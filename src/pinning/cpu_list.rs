//! CPU lists in the kernel's notation (`"0,2-3"`), as `--cpus` takes them and
//! `/sys/devices/system/node/node0/cpulist` prints them.

use std::fmt;
use std::str::FromStr;

/// Largest CPU number accepted; matches glibc's `CPU_SETSIZE`, the most `sched_setaffinity` takes.
pub const MAX_CPU: u32 = 1023;

/// An ordered list of distinct CPU (processing unit) OS indexes.
///
/// Order matters: with `--cpus`, worker *i* runs on the *i*-th listed CPU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuList(Vec<u32>);

impl CpuList {
    /// The CPUs in the order given.
    pub fn cpus(&self) -> &[u32] {
        &self.0
    }

    /// Builds a list from CPU numbers, rejecting duplicates and numbers above [`MAX_CPU`].
    pub fn from_cpus(cpus: impl IntoIterator<Item = u32>) -> Result<CpuList, CpuListError> {
        let mut list = Vec::new();
        for cpu in cpus {
            push_cpu(&mut list, cpu)?;
        }
        if list.is_empty() {
            return Err(CpuListError::Empty);
        }
        Ok(CpuList(list))
    }
}

fn push_cpu(list: &mut Vec<u32>, cpu: u32) -> Result<(), CpuListError> {
    if cpu > MAX_CPU {
        return Err(CpuListError::TooLarge(cpu));
    }
    if list.contains(&cpu) {
        return Err(CpuListError::Duplicate(cpu));
    }
    list.push(cpu);
    Ok(())
}

impl FromStr for CpuList {
    type Err = CpuListError;

    /// Parses `"0,2-3"`: comma-separated CPU numbers and inclusive ascending ranges.
    fn from_str(s: &str) -> Result<CpuList, CpuListError> {
        let mut list = Vec::new();
        for item in s.split(',') {
            let item = item.trim();
            if item.is_empty() {
                return Err(CpuListError::EmptyItem);
            }
            let (first, last) = match item.split_once('-') {
                Some((a, b)) => (parse_cpu(a, item)?, parse_cpu(b, item)?),
                None => {
                    let cpu = parse_cpu(item, item)?;
                    (cpu, cpu)
                }
            };
            if first > last {
                return Err(CpuListError::DescendingRange(item.to_string()));
            }
            if last > MAX_CPU {
                return Err(CpuListError::TooLarge(last));
            }
            for cpu in first..=last {
                push_cpu(&mut list, cpu)?;
            }
        }
        Ok(CpuList(list))
    }
}

fn parse_cpu(text: &str, item: &str) -> Result<u32, CpuListError> {
    let text = text.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CpuListError::NotANumber(item.to_string()));
    }
    // All digits: the only possible failure is overflow.
    text.parse().map_err(|_| CpuListError::TooLarge(u32::MAX))
}

impl fmt::Display for CpuList {
    /// Prints the list compressed (`0,2-3`), keeping the given order of runs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_runs(f, &self.0)
    }
}

/// Formats CPU numbers as sorted, compressed runs: `[3, 0, 1]` -> `"0-1,3"`.
pub(crate) fn format_sorted(cpus: &[u32]) -> String {
    let mut sorted = cpus.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = write_runs(&mut out, &sorted);
    out
}

fn write_runs(out: &mut impl fmt::Write, cpus: &[u32]) -> fmt::Result {
    let mut i = 0;
    while i < cpus.len() {
        let mut j = i;
        while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
            j += 1;
        }
        if i > 0 {
            out.write_char(',')?;
        }
        if j > i {
            write!(out, "{}-{}", cpus[i], cpus[j])?;
        } else {
            write!(out, "{}", cpus[i])?;
        }
        i = j + 1;
    }
    Ok(())
}

/// Why a CPU list was rejected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CpuListError {
    /// No CPU at all.
    Empty,
    /// An empty item, as in `"0,,1"` or a trailing comma.
    EmptyItem,
    /// An item that is neither `N` nor `N-M`.
    NotANumber(String),
    /// A range whose end is below its start, as in `"3-1"`.
    DescendingRange(String),
    /// A CPU number above [`MAX_CPU`].
    TooLarge(u32),
    /// The same CPU listed twice.
    Duplicate(u32),
}

impl fmt::Display for CpuListError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CpuListError::Empty => write!(f, "empty CPU list (expected e.g. \"0,2-3\")"),
            CpuListError::EmptyItem => {
                write!(
                    f,
                    "empty item in CPU list (stray comma?); expected e.g. \"0,2-3\""
                )
            }
            CpuListError::NotANumber(item) => {
                write!(
                    f,
                    "\"{item}\" is not a CPU number or range (expected N or N-M, e.g. \"0,2-3\")"
                )
            }
            CpuListError::DescendingRange(item) => {
                write!(
                    f,
                    "CPU range \"{item}\" ends below its start (write it low-high)"
                )
            }
            CpuListError::TooLarge(cpu) => write!(f, "CPU {cpu} is above the maximum {MAX_CPU}"),
            CpuListError::Duplicate(cpu) => write!(f, "CPU {cpu} is listed twice"),
        }
    }
}

impl std::error::Error for CpuListError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_numbers_and_ranges_in_order() {
        let list: CpuList = "4, 0,2-3".parse().unwrap();
        assert_eq!(list.cpus(), &[4, 0, 2, 3]);
        assert_eq!(list.to_string(), "4,0,2-3");
        assert_eq!("7".parse::<CpuList>().unwrap().cpus(), &[7]);
    }

    #[test]
    fn rejects_malformed_lists_with_the_offending_item() {
        let err = |s: &str| s.parse::<CpuList>().unwrap_err();
        assert_eq!(err(""), CpuListError::EmptyItem);
        assert_eq!(err("0,,1"), CpuListError::EmptyItem);
        assert_eq!(err("0,"), CpuListError::EmptyItem);
        assert_eq!(err("a"), CpuListError::NotANumber("a".into()));
        assert_eq!(err("1-"), CpuListError::NotANumber("1-".into()));
        assert_eq!(err("-1"), CpuListError::NotANumber("-1".into()));
        assert_eq!(err("1-2-3"), CpuListError::NotANumber("1-2-3".into()));
        assert_eq!(err("3-1"), CpuListError::DescendingRange("3-1".into()));
        assert_eq!(err("1,0-2"), CpuListError::Duplicate(1));
        assert_eq!(err("1024"), CpuListError::TooLarge(1024));
        assert_eq!(err("99999999999"), CpuListError::TooLarge(u32::MAX));
        assert!(err("3-1").to_string().contains("3-1"));
    }

    #[test]
    fn formats_sorted_runs() {
        assert_eq!(format_sorted(&[3, 0, 1, 7, 5, 6]), "0-1,3,5-7");
        assert_eq!(format_sorted(&[]), "");
        assert_eq!(CpuList::from_cpus([2, 1]).unwrap().to_string(), "2,1");
        assert_eq!(CpuList::from_cpus([]), Err(CpuListError::Empty));
    }
}
