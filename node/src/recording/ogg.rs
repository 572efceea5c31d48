//! An Ogg Opus stream writer (RFC 3533 pages, RFC 7845 mapping): identification and comment
//! headers, then Opus packets exactly as they arrived, paged with their granule positions.

/// 48 kHz samples in one Opus packet, from its TOC byte (RFC 6716 §3.1); `None` for an empty
/// or malformed packet.
pub fn opus_packet_samples(packet: &[u8]) -> Option<u32> {
    let toc = *packet.first()?;
    let config = toc >> 3;
    // Frame length in units of 2.5 ms (120 samples).
    let units: u32 = match config {
        0..=11 => [4, 8, 16, 24][usize::from(config % 4)],
        12..=15 => [4, 8][usize::from(config % 2)],
        _ => [1, 2, 4, 8][usize::from(config % 4)],
    };
    let frames = match toc & 3 {
        0 => 1,
        1 | 2 => 2,
        _ => u32::from(*packet.get(1)? & 0x3f),
    };
    let samples = frames * units * 120;
    // RFC 6716: a packet holds at most 120 ms.
    (frames > 0 && samples <= 5760).then_some(samples)
}

/// The 20 ms silence frame (CELT, mono): fills gaps between talkers so the file's timeline
/// is the listener's.
pub const SILENCE_FRAME: [u8; 3] = [0xf8, 0xff, 0xfe];

/// Samples a player discards at the start (RFC 7845 §4.2).
pub const PRE_SKIP: u16 = 312;

/// Packets per page at most: about a second of 20 ms frames, so a crash loses little.
const PACKETS_PER_PAGE: usize = 50;

/// One logical Ogg Opus stream, turned into page bytes for the caller to write.
pub struct OggOpusWriter {
    serial: u32,
    sequence: u32,
    granule: u64,
    pending: Vec<Vec<u8>>,
}

impl OggOpusWriter {
    /// A stream with this serial number; returns the writer and its two header pages.
    pub fn start(serial: u32, tags: &[String]) -> (Self, Vec<u8>) {
        let mut writer = Self {
            serial,
            sequence: 0,
            granule: 0,
            pending: Vec::new(),
        };
        let mut head = Vec::with_capacity(19);
        head.extend_from_slice(b"OpusHead");
        head.push(1); // version
        head.push(1); // channels: mono (stereo packets decode to mono)
                      // Pre-skip: libopus's usual 6.5 ms look-ahead. The packets start mid-stream, so this
                      // only trims the file's first 6.5 ms (players warn about less).
        head.extend_from_slice(&PRE_SKIP.to_le_bytes());
        head.extend_from_slice(&48_000u32.to_le_bytes());
        head.extend_from_slice(&0i16.to_le_bytes()); // output gain
        head.push(0); // mapping family 0
        let mut comments = Vec::new();
        comments.extend_from_slice(b"OpusTags");
        let vendor = b"callsign";
        comments.extend_from_slice(&(vendor.len() as u32).to_le_bytes());
        comments.extend_from_slice(vendor);
        comments.extend_from_slice(&(tags.len() as u32).to_le_bytes());
        for tag in tags {
            comments.extend_from_slice(&(tag.len() as u32).to_le_bytes());
            comments.extend_from_slice(tag.as_bytes());
        }
        let mut bytes = writer.page(0x02, 0, &[head]);
        bytes.extend(writer.page(0x00, 0, &[comments]));
        (writer, bytes)
    }

    /// Samples written so far (the granule position of the last packet).
    pub fn granule(&self) -> u64 {
        self.granule
    }

    /// Adds a packet of `samples` 48 kHz samples; returns page bytes when a page filled.
    pub fn push(&mut self, packet: &[u8], samples: u32) -> Option<Vec<u8>> {
        self.pending.push(packet.to_vec());
        self.granule += u64::from(samples);
        let segments: usize = self.pending.iter().map(|p| p.len() / 255 + 1).sum();
        // A page holds 255 lacing values; the largest Opus packet needs 6.
        (self.pending.len() >= PACKETS_PER_PAGE || segments > 255 - 6).then(|| self.flush(0))
    }

    /// The last page, marked end of stream.
    pub fn finish(mut self) -> Vec<u8> {
        self.flush(0x04)
    }

    fn flush(&mut self, flags: u8) -> Vec<u8> {
        let packets = std::mem::take(&mut self.pending);
        self.page(flags, self.granule, &packets)
    }

    fn page(&mut self, flags: u8, granule: u64, packets: &[Vec<u8>]) -> Vec<u8> {
        let mut lacing = Vec::new();
        for p in packets {
            lacing.extend(std::iter::repeat_n(255u8, p.len() / 255));
            lacing.push((p.len() % 255) as u8);
        }
        let body: usize = packets.iter().map(Vec::len).sum();
        let mut page = Vec::with_capacity(27 + lacing.len() + body);
        page.extend_from_slice(b"OggS");
        page.push(0); // version
        page.push(flags);
        page.extend_from_slice(&granule.to_le_bytes());
        page.extend_from_slice(&self.serial.to_le_bytes());
        page.extend_from_slice(&self.sequence.to_le_bytes());
        page.extend_from_slice(&[0; 4]); // CRC, filled below
        page.push(lacing.len() as u8);
        page.extend_from_slice(&lacing);
        for p in packets {
            page.extend_from_slice(p);
        }
        let crc = crc32(&page);
        page[22..26].copy_from_slice(&crc.to_le_bytes());
        self.sequence += 1;
        page
    }
}

/// Ogg's CRC-32: polynomial 0x04c11db7, MSB first, no reflection, zero init and final XOR.
pub fn crc32(bytes: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut r = (i as u32) << 24;
            let mut bit = 0;
            while bit < 8 {
                r = if r & 0x8000_0000 != 0 {
                    (r << 1) ^ 0x04c1_1db7
                } else {
                    r << 1
                };
                bit += 1;
            }
            table[i] = r;
            i += 1;
        }
        table
    };
    bytes.iter().fold(0u32, |crc, b| {
        (crc << 8) ^ TABLE[(((crc >> 24) as u8) ^ b) as usize]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toc_bytes_give_frame_lengths() {
        assert_eq!(opus_packet_samples(&SILENCE_FRAME), Some(960));
        // SILK 20 ms, one frame; two frames (code 1); hybrid 10 ms.
        assert_eq!(opus_packet_samples(&[0x08]), Some(960));
        assert_eq!(opus_packet_samples(&[0x09, 0]), Some(1920));
        assert_eq!(opus_packet_samples(&[0x60]), Some(480));
        // Code 3 with 3 frames of CELT 20 ms; with 0 frames; too long.
        assert_eq!(opus_packet_samples(&[0xfb, 3]), Some(2880));
        assert_eq!(opus_packet_samples(&[0xfb, 0]), None);
        assert_eq!(opus_packet_samples(&[0xfb, 7]), None);
        assert_eq!(opus_packet_samples(&[]), None);
        assert_eq!(opus_packet_samples(&[0xfb]), None);
    }

    #[test]
    fn the_crc_is_ogg_s() {
        // A page's CRC over itself with the CRC field zeroed, as libogg computes it.
        assert_eq!(crc32(b""), 0);
        assert_eq!(crc32(b"123456789"), 0x89a1_897f);
    }

    #[test]
    fn pages_carry_their_packets_and_granules() {
        let (mut w, headers) = OggOpusWriter::start(7, &["TITLE=x".into()]);
        assert_eq!(&headers[..4], b"OggS");
        assert_eq!(headers[5], 0x02, "the first page begins the stream");
        let mut pages: Vec<Vec<u8>> = Vec::new();
        for _ in 0..120 {
            pages.extend(w.push(&SILENCE_FRAME, 960));
        }
        assert_eq!(w.granule(), 120 * 960);
        let last = w.finish();
        assert_eq!(last[5], 0x04);
        assert_eq!(
            u64::from_le_bytes(last[6..14].try_into().unwrap()),
            120 * 960
        );
        // Two full pages of 50 and the last of 20.
        assert_eq!(pages.len(), 2);
        assert!(pages.iter().all(|p| p.len() == 27 + 50 + 150));
        assert_eq!(u32::from_le_bytes(pages[1][18..22].try_into().unwrap()), 3);
        assert_eq!(last[26], 20);
    }
}
