//! The order of the parallel signal passes' decodes: as the rows come, or, with non-causal
//! image rows (Gemma 3), phase by phase with each image whole.

use super::passes::PassRow;
use super::EngineError;

/// The decodes of one group of parallel passes, in order. Without non-causal rows: the rows as
/// they come, `per_batch` at a time (what the recorded signals were measured with). With them:
/// phase by phase, a phase being each pass's rows up to the next change of attention kind (the
/// k-th phase of every pass decoded together, the passes being independent sequences), and a
/// pass's non-causal span never split between decodes, since its rows must see each other.
pub(super) fn decode_blocks<'a>(
    entries: &[PassRow<'a>],
    per_batch: usize,
) -> Result<Vec<Vec<PassRow<'a>>>, EngineError> {
    if !entries.iter().any(|e| e.non_causal) {
        return Ok(entries.chunks(per_batch).map(<[_]>::to_vec).collect());
    }
    let mut last: std::collections::HashMap<i32, (bool, usize)> = Default::default();
    let mut phased: Vec<(usize, PassRow<'a>)> = entries
        .iter()
        .map(|e| {
            let phase = match last.get(&e.seq) {
                Some(&(kind, k)) if kind == e.non_causal => k,
                Some(&(_, k)) => k + 1,
                None => 0,
            };
            last.insert(e.seq, (e.non_causal, phase));
            (phase, *e)
        })
        .collect();
    phased.sort_by_key(|(phase, _)| *phase);
    // Units that may not be split: a pass's non-causal span, or a single causal row.
    let mut units: Vec<(usize, Vec<PassRow<'a>>)> = Vec::new();
    for (phase, e) in phased {
        match units.last_mut() {
            Some((p, unit)) if *p == phase && e.non_causal && unit[0].seq == e.seq => unit.push(e),
            _ => units.push((phase, vec![e])),
        }
    }
    let mut blocks: Vec<(usize, Vec<PassRow<'a>>)> = Vec::new();
    for (phase, unit) in units {
        if unit.len() > per_batch {
            return Err(EngineError::InvalidRequest(format!(
                "an image of {} rows attends non-causally and must fit one batch of {per_batch}",
                unit.len()
            )));
        }
        match blocks.last_mut() {
            Some((p, block))
                if *p == phase
                    && block[0].non_causal == unit[0].non_causal
                    && block.len() + unit.len() <= per_batch =>
            {
                block.extend(unit)
            }
            _ => blocks.push((phase, unit)),
        }
    }
    Ok(blocks.into_iter().map(|(_, b)| b).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Passes `0..n_pass` of the layout `kinds` (true: a non-causal row), as sequence ids.
    fn entries<'a>(row: &'a [f32], n_pass: i32, kinds: &'a [bool]) -> Vec<PassRow<'a>> {
        (0..n_pass)
            .flat_map(|seq| {
                kinds
                    .iter()
                    .enumerate()
                    .map(move |(k, &non_causal)| PassRow {
                        row,
                        pos: [k as i32; 3],
                        seq,
                        output: None,
                        non_causal,
                    })
            })
            .collect()
    }

    fn shape(blocks: &[Vec<PassRow<'_>>]) -> Vec<Vec<(i32, i32)>> {
        blocks
            .iter()
            .map(|b| b.iter().map(|e| (e.seq, e.pos[0])).collect())
            .collect()
    }

    #[test]
    fn causal_rows_are_decoded_as_they_come() {
        let row = [0.0];
        let e = entries(&row, 2, &[false; 3]);
        let blocks = decode_blocks(&e, 4).unwrap();
        assert_eq!(
            shape(&blocks),
            [vec![(0, 0), (0, 1), (0, 2), (1, 0)], vec![(1, 1), (1, 2)]]
        );
    }

    #[test]
    fn non_causal_spans_are_decoded_whole_and_apart_from_causal_rows() {
        let row = [0.0];
        // text, a 3-row image, text: three phases per pass.
        let e = entries(&row, 3, &[false, true, true, true, false]);
        let blocks = decode_blocks(&e, 6).unwrap();
        assert_eq!(
            shape(&blocks),
            [
                vec![(0, 0), (1, 0), (2, 0)],
                vec![(0, 1), (0, 2), (0, 3), (1, 1), (1, 2), (1, 3)],
                vec![(2, 1), (2, 2), (2, 3)],
                vec![(0, 4), (1, 4), (2, 4)],
            ]
        );
        for b in &blocks {
            assert!(b.iter().all(|r| r.non_causal == b[0].non_causal));
        }
        assert!(decode_blocks(&e, 2).is_err(), "an image wider than a batch");
    }
}
