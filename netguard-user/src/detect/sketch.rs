//! Fixed-size distinct counters. Per-source state must stay small and bounded however many ports or
//! hosts a scanner touches, so distinct counts are sketched instead of stored as sets. Hashes are fixed
//! functions (no per-process random keys) so that the lab and the daemon compute identical features.

use std::net::IpAddr;

/// SplitMix64's finaliser: a cheap, well-mixing bijection on u64.
pub(crate) fn mix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Hash of 16 address bytes (IPv4 in the first four, as in `FlowKey`).
pub(crate) fn hash16(b: &[u8; 16]) -> u64 {
    let lo = u64::from_le_bytes(b[..8].try_into().expect("8 bytes"));
    let hi = u64::from_le_bytes(b[8..].try_into().expect("8 bytes"));
    mix64(lo ^ mix64(hi))
}

pub(crate) fn hash_ip(ip: &IpAddr) -> u64 {
    let mut b = [0u8; 16];
    match ip {
        IpAddr::V4(a) => b[..4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => b = a.octets(),
    }
    hash16(&b) ^ u64::from(ip.is_ipv6())
}

/// Linear-counting bitmap of `64 * W` bits: exact enough for small counts (what separates a client
/// from a scanner), and it saturates at about m·ln(m) instead of growing. Unions are a bitwise OR, which
/// is how the 1 s bitmaps combine into the long window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Bits<const W: usize>(pub [u64; W]);

impl<const W: usize> Default for Bits<W> {
    fn default() -> Self {
        Bits([0; W])
    }
}

impl<const W: usize> Bits<W> {
    pub fn insert(&mut self, hash: u64) {
        let i = (hash >> 32) as usize % (64 * W);
        self.0[i / 64] |= 1 << (i % 64);
    }

    pub fn union(&mut self, other: &Self) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a |= b;
        }
    }

    /// Estimated number of distinct items: m·ln(m / zero bits).
    pub fn estimate(&self) -> f64 {
        let m = (64 * W) as f64;
        let ones: u32 = self.0.iter().map(|w| w.count_ones()).sum();
        let zeros = m - f64::from(ones);
        if zeros == 0.0 {
            // Saturated: report the largest value the sketch can express.
            m * m.ln()
        } else {
            m * (m / zeros).ln()
        }
    }
}

/// HyperLogLog with 2^10 registers (1 KiB, ~3% error): counts the distinct untracked sources of one
/// tick, which during a spoofed flood can be millions.
#[derive(Clone, Debug)]
pub(crate) struct Hll {
    regs: Box<[u8; 1024]>,
}

impl Default for Hll {
    fn default() -> Self {
        Hll {
            regs: Box::new([0; 1024]),
        }
    }
}

impl Hll {
    pub fn insert(&mut self, hash: u64) {
        let idx = (hash >> 54) as usize;
        // The remaining 54 bits, with a sentinel so an all-zero remainder still has a finite rank.
        let rest = (hash << 10) | (1 << 9);
        let rank = rest.leading_zeros() as u8 + 1;
        let r = &mut self.regs[idx];
        *r = (*r).max(rank);
    }

    pub fn estimate(&self) -> f64 {
        let m = 1024.0f64;
        let alpha = 0.7213 / (1.0 + 1.079 / m);
        let sum: f64 = self.regs.iter().map(|&r| 2f64.powi(-i32::from(r))).sum();
        let raw = alpha * m * m / sum;
        let zeros = self.regs.iter().filter(|&&r| r == 0).count();
        if raw <= 2.5 * m && zeros > 0 {
            m * (m / zeros as f64).ln()
        } else {
            raw
        }
    }

    pub fn clear(&mut self) {
        self.regs.fill(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmap_is_near_exact_for_small_counts_and_saturates() {
        let mut b = Bits::<4>::default();
        assert_eq!(b.estimate(), 0.0);
        for p in 0..20u64 {
            b.insert(mix64(p));
        }
        assert!((b.estimate() - 20.0).abs() < 2.5, "{}", b.estimate());
        for p in 0..100_000u64 {
            b.insert(mix64(p));
        }
        assert!(b.estimate() > 1000.0 && b.estimate() < 1500.0);
    }

    #[test]
    fn hll_counts_millions_within_a_few_percent() {
        let mut h = Hll::default();
        for i in 0..1_000_000u64 {
            h.insert(mix64(i));
        }
        let e = h.estimate();
        assert!((e - 1e6).abs() / 1e6 < 0.08, "{e}");
        h.clear();
        for i in 0..10u64 {
            h.insert(mix64(i));
        }
        assert!((h.estimate() - 10.0).abs() < 1.0);
    }
}
