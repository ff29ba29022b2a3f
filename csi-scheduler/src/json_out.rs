//! The extender's answers written as JSON straight into the response buffer: the
//! `ExtenderFilterResult` from the filter's [`Verdicts`] and the `HostPriorityList` from the
//! scores, node names borrowed from the request, each rejection message from its reason's
//! pre-escaped text — no map or list of owned strings in between. The shape is what
//! `crate::wire`'s serde types give (the equivalence tests compare the two).

use serde_json::value::RawValue;

use crate::extender::Verdicts;

/// Appends a JSON number (serde_json's own integer writer).
pub fn write_num(out: &mut Vec<u8>, value: impl serde::Serialize) {
    serde_json::to_writer(&mut *out, &value).expect("writing to a Vec never fails");
}

/// Appends `text` as a JSON string; `verbatim` text (taken from a JSON string that had no
/// escape) and text without characters to escape are copied as they are.
pub fn write_str(out: &mut Vec<u8>, verbatim: bool, text: &str) {
    if verbatim || text.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    } else {
        serde_json::to_writer(&mut *out, text).expect("writing to a Vec never fails");
    }
}

/// The `ExtenderFilterResult` for `names` (`verbatim`: see [`write_str`]) and their verdicts.
/// With `full_nodes` (the scheduler sent Node objects) the passing nodes are echoed verbatim in
/// `Nodes` and `NodeNames` is null; otherwise `NodeNames` lists the passing names.
pub fn filter_result(
    names: &[&str],
    verbatim: bool,
    full_nodes: Option<&[&RawValue]>,
    verdicts: &Verdicts,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + names.len() * 24);
    let passing = || {
        verdicts
            .of_nodes
            .iter()
            .enumerate()
            .filter(|(_, v)| v.passes())
            .map(|(i, _)| i)
    };
    out.extend_from_slice(b"{\"Nodes\":");
    match full_nodes {
        Some(items) => {
            out.extend_from_slice(
                b"{\"apiVersion\":\"v1\",\"kind\":\"NodeList\",\"metadata\":{},\"items\":[",
            );
            for (k, i) in passing().enumerate() {
                if k > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(items[i].get().as_bytes());
            }
            out.extend_from_slice(b"]},\"NodeNames\":null");
        }
        None => {
            out.extend_from_slice(b"null,\"NodeNames\":[");
            for (k, i) in passing().enumerate() {
                if k > 0 {
                    out.push(b',');
                }
                write_str(&mut out, verbatim, names[i]);
            }
            out.push(b']');
        }
    }
    for (key, unresolvable) in [
        (&b",\"FailedNodes\":{"[..], false),
        (&b",\"FailedAndUnresolvableNodes\":{"[..], true),
    ] {
        out.extend_from_slice(key);
        let mut first = true;
        for (i, &verdict) in verdicts.of_nodes.iter().enumerate() {
            let Some(kind) = verdicts.kind(verdict) else {
                continue;
            };
            if kind.is_unresolvable() != unresolvable {
                continue;
            }
            if !first {
                out.push(b',');
            }
            first = false;
            write_str(&mut out, verbatim, names[i]);
            out.push(b':');
            verdicts.write_message_json(verdict, &mut out);
        }
        out.push(b'}');
    }
    out.extend_from_slice(b",\"Error\":\"\"}");
    out
}

/// The `HostPriorityList` for `names` (`verbatim`: see [`write_str`]) and their scores.
pub fn priority_list(names: &[&str], verbatim: bool, scores: &[i64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + names.len() * 32);
    out.push(b'[');
    for (i, (name, &score)) in names.iter().zip(scores).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"Host\":");
        write_str(&mut out, verbatim, name);
        out.extend_from_slice(b",\"Score\":");
        write_num(&mut out, score);
        out.push(b'}');
    }
    out.push(b']');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_and_lists_are_written_as_serde_json_writes_them() {
        for s in [
            "node-a",
            "",
            "a\"b",
            "back\\slash",
            "tab\there",
            "ünï",
            "\u{1}",
        ] {
            let mut out = Vec::new();
            write_str(&mut out, false, s);
            assert_eq!(out, serde_json::to_vec(s).unwrap(), "{s:?}");
        }
        assert_eq!(
            priority_list(&["a", "b\""], false, &[10, 0]),
            serde_json::to_vec(&serde_json::json!([
                {"Host": "a", "Score": 10}, {"Host": "b\"", "Score": 0}
            ]))
            .unwrap()
        );
    }
}
