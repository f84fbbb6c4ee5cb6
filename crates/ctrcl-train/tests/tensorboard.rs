//! ctrcl's TensorBoard events against TensorBoard's own writer: the same events give the same
//! bytes as `tests/data/tensorboard/reference.tfevents`, written by TensorBoard 2.21's
//! `RecordWriter` from its `Event`/`Summary` protos and read back by its `EventAccumulator`
//! (scripts/reference/tensorboard_events.py). Exact: framing, CRCs and proto encoding are
//! deterministic, and the values are the same f32/f64 bits.

use ctrcl_train::tensorboard::{read_events, record_of, Event, Payload};

fn events() -> Vec<Event> {
    vec![
        Event {
            wall_time: 1764900000.25,
            step: 0,
            payload: Payload::FileVersion("brain.Event:2".into()),
        },
        Event {
            wall_time: 1764900001.5,
            step: 1,
            payload: Payload::Scalars(vec![
                ("cnn/ce".into(), 1.467_826_6),
                ("lr/transformer".into(), 0.001),
            ]),
        },
        Event {
            wall_time: 1764900009.0,
            step: 7,
            payload: Payload::Scalars(vec![("val/cnn/mean_dice".into(), 0.8125)]),
        },
    ]
}

const REFERENCE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/tensorboard/reference.tfevents"
);

#[test]
fn events_are_byte_identical_to_tensorboards_writer() {
    let ours: Vec<u8> = events().iter().flat_map(record_of).collect();
    let theirs = std::fs::read(REFERENCE).unwrap();
    assert_eq!(ours, theirs);
}

#[test]
fn tensorboards_file_reads_back_as_the_same_events() {
    let path = std::path::Path::new(REFERENCE);
    assert_eq!(read_events(path).unwrap(), events());
}

#[test]
fn a_cut_or_damaged_record_ends_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events");
    let mut bytes = std::fs::read(REFERENCE).unwrap();
    // Cut inside the last record: the first two remain.
    std::fs::write(&path, &bytes[..bytes.len() - 5]).unwrap();
    assert_eq!(read_events(&path).unwrap(), events()[..2]);
    // A flipped byte in the second record's data: its CRC fails, only the first remains.
    let second = record_of(&events()[0]).len() + 20;
    bytes[second] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    assert_eq!(read_events(&path).unwrap(), events()[..1]);
}
