//! Stored (uncompressed) zip archives: enough to hand the user one download holding several files
//! (an adapter folder, a merged model) and to read such an archive back. Adapter and model weights
//! barely compress, so storing costs little and needs no compression library in the page.
//!
//! Layout (PKWARE APPNOTE 4.3): per file a local header + name + bytes, then one central directory
//! entry per file, then the end-of-central-directory record. No zip64: every file and the whole
//! archive must stay under 4 GiB, which [`store`] checks.

/// What can be wrong with an archive, as a sentence.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ZipError {
    #[error("the zip file is damaged or not a zip file ({0})")]
    Corrupt(String),
    #[error("`{0}` in the zip file is compressed; unzip it and choose the files themselves")]
    Compressed(String),
    #[error("`{0}` is larger than a zip without zip64 can hold (4 GiB)")]
    TooLarge(String),
}

/// CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320), as zip stores it.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut table = [0u32; 256];
    for (i, t) in table.iter_mut().enumerate() {
        let mut c = i as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
        }
        *t = c;
    }
    !bytes.iter().fold(!0u32, |c, &b| table[((c ^ b as u32) & 0xFF) as usize] ^ (c >> 8))
}

/// One archive holding `files` (name, bytes), uncompressed.
pub fn store(files: &[(&str, &[u8])]) -> Result<Vec<u8>, ZipError> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    let le16 = |v: &mut Vec<u8>, x: u16| v.extend_from_slice(&x.to_le_bytes());
    let le32 = |v: &mut Vec<u8>, x: u32| v.extend_from_slice(&x.to_le_bytes());
    for (name, bytes) in files {
        let size = u32::try_from(bytes.len()).map_err(|_| ZipError::TooLarge(name.to_string()))?;
        let offset = u32::try_from(out.len()).map_err(|_| ZipError::TooLarge(name.to_string()))?;
        let crc = crc32(bytes);
        // Fields shared by the local header and the central entry: version needed 2.0, flags (bit 11:
        // UTF-8 names), method 0 (stored), DOS time and date (1980-01-01 00:00), crc, sizes, name length.
        let mut common = Vec::new();
        le16(&mut common, 20);
        le16(&mut common, 0x0800);
        le16(&mut common, 0);
        le16(&mut common, 0);
        le16(&mut common, 0x21);
        le32(&mut common, crc);
        le32(&mut common, size);
        le32(&mut common, size);
        le16(&mut common, name.len() as u16);
        le32(&mut out, 0x0403_4b50);
        out.extend_from_slice(&common);
        le16(&mut out, 0); // extra length
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(bytes);

        le32(&mut central, 0x0201_4b50);
        le16(&mut central, 20); // version made by
        central.extend_from_slice(&common);
        for _ in 0..4 {
            le16(&mut central, 0); // extra, comment, disk number, internal attributes
        }
        le32(&mut central, 0); // external attributes
        le32(&mut central, offset);
        central.extend_from_slice(name.as_bytes());
    }
    let cd_offset = u32::try_from(out.len()).map_err(|_| ZipError::TooLarge("the archive".into()))?;
    out.extend_from_slice(&central);
    le32(&mut out, 0x0605_4b50);
    le16(&mut out, 0);
    le16(&mut out, 0);
    le16(&mut out, files.len() as u16);
    le16(&mut out, files.len() as u16);
    le32(&mut out, central.len() as u32);
    le32(&mut out, cd_offset);
    le16(&mut out, 0);
    Ok(out)
}

/// The files of a stored archive, by its central directory; each file's CRC is checked.
pub fn read(bytes: &[u8]) -> Result<Vec<(String, Vec<u8>)>, ZipError> {
    let corrupt = |why: &str| ZipError::Corrupt(why.to_string());
    let u16_at = |at: usize| bytes.get(at..at + 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let u32_at = |at: usize| bytes.get(at..at + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
    // The end record is the last 22 bytes unless the archive has a comment: search backwards.
    let eocd = (0..=bytes.len().saturating_sub(22))
        .rev()
        .find(|&i| u32_at(i) == Some(0x0605_4b50))
        .ok_or_else(|| corrupt("no end of central directory"))?;
    let count = u16_at(eocd + 10).ok_or_else(|| corrupt("short end record"))?;
    let mut at = u32_at(eocd + 16).ok_or_else(|| corrupt("short end record"))?;
    let mut files = Vec::with_capacity(count);
    // A stored archive cannot hold more than its own bytes; entries that share data could (a
    // directory listing one file 65535 times), so the total is capped before anything is copied.
    let mut total = 0usize;
    for _ in 0..count {
        if u32_at(at) != Some(0x0201_4b50) {
            return Err(corrupt("bad central directory entry"));
        }
        let field = |off: usize| u16_at(at + off).ok_or_else(|| corrupt("short central entry"));
        let (method, name_len, extra_len, comment_len) = (field(10)?, field(28)?, field(30)?, field(32)?);
        let crc = u32_at(at + 16).ok_or_else(|| corrupt("short central entry"))? as u32;
        let size = u32_at(at + 20).ok_or_else(|| corrupt("short central entry"))?;
        let local = u32_at(at + 42).ok_or_else(|| corrupt("short central entry"))?;
        let name = bytes.get(at + 46..at + 46 + name_len).ok_or_else(|| corrupt("short name"))?;
        let name = String::from_utf8_lossy(name).into_owned();
        if method != 0 {
            return Err(ZipError::Compressed(name));
        }
        if u32_at(local) != Some(0x0403_4b50) {
            return Err(corrupt("bad local header"));
        }
        let start = local + 30 + u16_at(local + 26).unwrap_or(0) + u16_at(local + 28).unwrap_or(0);
        let data = start.checked_add(size).and_then(|end| bytes.get(start..end)).ok_or_else(|| corrupt("a file runs past the end"))?;
        total += size;
        if total > bytes.len() {
            return Err(corrupt("its files overlap"));
        }
        if crc32(data) != crc {
            return Err(ZipError::Corrupt(format!("`{name}` fails its CRC check")));
        }
        // Folders (names ending in '/') hold nothing.
        if !name.ends_with('/') {
            files.push((name, data.to_vec()));
        }
        at += 46 + name_len + extra_len + comment_len;
    }
    Ok(files)
}
