//! Replay protection: which counters of a link's datagrams have been taken.

/// Which counters a receiver has taken: the highest, and a bitmap of the [`Self::SIZE`] below.
#[derive(Clone, Debug, Default)]
pub struct CounterWindow {
    /// One past the highest counter taken (0: none yet).
    top: u64,
    /// Bit `i`: counter `top - 1 - i` was taken.
    bits: [u64; Self::WORDS],
}

impl CounterWindow {
    const WORDS: usize = 4;
    /// How far behind the newest a datagram may arrive (reordering) and still be taken.
    pub const SIZE: u64 = 64 * Self::WORDS as u64;

    /// Whether `counter` would be taken. Checked before the tag, recorded only after it.
    pub fn check(&self, counter: u64) -> bool {
        if counter >= self.top {
            return true;
        }
        let back = self.top - 1 - counter;
        back < Self::SIZE && self.bits[(back / 64) as usize] & (1 << (back % 64)) == 0
    }

    /// Records `counter`; false if it was a replay or too old.
    pub fn accept(&mut self, counter: u64) -> bool {
        if !self.check(counter) {
            return false;
        }
        if counter >= self.top {
            self.shift(counter + 1 - self.top);
            self.top = counter + 1;
        }
        let back = self.top - 1 - counter;
        self.bits[(back / 64) as usize] |= 1 << (back % 64);
        true
    }

    fn shift(&mut self, by: u64) {
        if by >= Self::SIZE {
            self.bits = [0; Self::WORDS];
            return;
        }
        let (words, bits) = ((by / 64) as usize, (by % 64) as u32);
        for i in (0..Self::WORDS).rev() {
            let high = i.checked_sub(words).map_or(0, |s| self.bits[s]);
            let low = i.checked_sub(words + 1).map_or(0, |s| self.bits[s]);
            self.bits[i] = if bits == 0 {
                high
            } else {
                (high << bits) | (low >> (64 - bits))
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_takes_reordered_counters_once_and_refuses_old_ones() {
        let mut w = CounterWindow::default();
        assert!(w.accept(5));
        assert!(w.accept(3));
        assert!(!w.accept(3));
        assert!(w.accept(4));
        assert!(!w.accept(5));
        assert!(w.accept(5 + CounterWindow::SIZE));
        assert!(!w.accept(5), "fell out of the window");
        assert!(w.accept(7), "still inside");
        assert!(w.accept(1000 * CounterWindow::SIZE));
        assert!(!w.check(1000 * CounterWindow::SIZE));
        assert!(w.check(1000 * CounterWindow::SIZE - 1));
        assert!(!w.check(1000 * CounterWindow::SIZE - 1 - CounterWindow::SIZE));
        // Shifts by every amount keep exactly the taken counters.
        for by in 1..3 * CounterWindow::SIZE {
            let mut w = CounterWindow::default();
            let taken: Vec<u64> = (0..CounterWindow::SIZE).filter(|c| c % 3 == 0).collect();
            for &c in &taken {
                assert!(w.accept(c));
            }
            let top = CounterWindow::SIZE - 1 + by;
            assert!(w.accept(top));
            for c in 0..top {
                let inside = top - c < CounterWindow::SIZE;
                assert_eq!(
                    w.check(c),
                    inside && !taken.contains(&c),
                    "by {by}, counter {c}"
                );
            }
        }
    }
}
