//! A receiver's replay window per sender key: accepts each sequence number once, within the
//! last [`ReplayWindow::SIZE`] packets, so a recorded packet replayed later is refused even
//! though it still authenticates.

/// Sliding window over the 16-bit sequence numbers, extended to 64 bits across wraps.
#[derive(Clone, Debug, Default)]
pub struct ReplayWindow {
    /// Highest extended sequence accepted, if any.
    highest: Option<u64>,
    /// Bit `i` set: `highest - i` was accepted.
    bits: [u64; Self::WORDS],
}

impl ReplayWindow {
    const WORDS: usize = 16;
    /// How far back (in packets) a late packet is still accepted.
    pub const SIZE: u64 = 64 * Self::WORDS as u64;

    /// A window that has accepted nothing.
    pub fn new() -> Self {
        Self::default()
    }

    fn extend(&self, sequence: u16) -> u64 {
        match self.highest {
            None => u64::from(sequence) + (1 << 16),
            Some(h) => {
                let delta = i64::from(sequence.wrapping_sub(h as u16) as i16);
                h.saturating_add_signed(delta)
            }
        }
    }

    fn bit(&self, offset: u64) -> bool {
        let (word, bit) = ((offset / 64) as usize, offset % 64);
        self.bits[word] & (1 << bit) != 0
    }

    fn set(&mut self, offset: u64) {
        let (word, bit) = ((offset / 64) as usize, offset % 64);
        self.bits[word] |= 1 << bit;
    }

    /// Shifts the window forward by `by` packets.
    fn advance(&mut self, by: u64) {
        if by >= Self::SIZE {
            self.bits = [0; Self::WORDS];
            return;
        }
        let (words, bits) = ((by / 64) as usize, (by % 64) as u32);
        for i in (0..Self::WORDS).rev() {
            let src = i.checked_sub(words);
            let high = src.map_or(0, |s| self.bits[s]);
            let low = src
                .and_then(|s| s.checked_sub(1))
                .map_or(0, |s| self.bits[s]);
            self.bits[i] = if bits == 0 {
                high
            } else {
                (high << bits) | (low >> (64 - bits))
            };
        }
    }

    /// Whether `sequence` would be accepted, without recording it. Call before the costly
    /// authentication; call [`ReplayWindow::accept`] only after it succeeded, so forged packets
    /// cannot move the window.
    pub fn check(&self, sequence: u16) -> bool {
        let Some(highest) = self.highest else {
            return true;
        };
        let seq = self.extend(sequence);
        if seq > highest {
            return true;
        }
        let offset = highest - seq;
        offset < Self::SIZE && !self.bit(offset)
    }

    /// Records `sequence` as seen; false if it is a replay or too old.
    pub fn accept(&mut self, sequence: u16) -> bool {
        if !self.check(sequence) {
            return false;
        }
        let seq = self.extend(sequence);
        match self.highest {
            Some(highest) if seq <= highest => self.set(highest - seq),
            Some(highest) => {
                self.advance(seq - highest);
                self.highest = Some(seq);
                self.set(0);
            }
            None => {
                self.highest = Some(seq);
                self.set(0);
            }
        }
        true
    }
}
