//! Skeletons in the `metadata` JSON: a global `nodes` list of names and, per skeleton, a
//! networkx node-link graph whose nodes are indices into it and whose links carry a
//! jsonpickle edge type (1 = edge, 2 = symmetry), as sleap-io's `SkeletonSLPDecoder` reads.

use serde_json::{json, Value};

use crate::pose::Skeleton;

/// Decode the skeletons of a parsed `metadata` JSON. Errors are the problem, without the
/// file (the caller names it).
pub(crate) fn decode(md: &Value) -> Result<Vec<Skeleton>, String> {
    let names: Vec<String> = md
        .get("nodes")
        .and_then(Value::as_array)
        .ok_or("no 'nodes' list")?
        .iter()
        .enumerate()
        .map(|(i, n)| {
            n.get("name")
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or(format!("nodes[{i}] has no 'name'"))
        })
        .collect::<Result<_, _>>()?;
    let skeletons = md
        .get("skeletons")
        .and_then(Value::as_array)
        .ok_or("no 'skeletons' list")?;
    skeletons
        .iter()
        .enumerate()
        .map(|(s, skel)| decode_one(skel, &names).map_err(|e| format!("skeletons[{s}]: {e}")))
        .collect()
}

fn decode_one(skel: &Value, names: &[String]) -> Result<Skeleton, String> {
    // SLEAP >= 1.3.2 wraps the graph with a description and preview image.
    let skel = skel.get("nx_graph").unwrap_or(skel);
    let node_ids: Vec<usize> = skel
        .get("nodes")
        .and_then(Value::as_array)
        .ok_or("no 'nodes' list")?
        .iter()
        .map(|n| {
            let id = n.get("id").unwrap_or(n);
            // Older jsonpickle output nests the index as {"id": {"py/id": k}}.
            let id = id.get("py/id").unwrap_or(id);
            id.as_u64()
                .map(|v| v as usize)
                .filter(|&v| v < names.len())
                .ok_or(format!(
                    "node {n} is not an index into the {} node names",
                    names.len()
                ))
        })
        .collect::<Result<_, _>>()?;
    let local = |global: &Value| -> Result<usize, String> {
        let g = global
            .as_u64()
            .ok_or(format!("link end {global} is not an index"))? as usize;
        node_ids
            .iter()
            .position(|&n| n == g)
            .ok_or(format!("link end {g} is not a node of this skeleton"))
    };

    // jsonpickle gives each new EdgeType object an implicit py/id (1, 2, ...) in order of
    // appearance; later links refer back to it.
    let mut type_by_py_id = Vec::new();
    let mut edge_type = 0u64;
    let (mut edges, mut symmetries) = (Vec::new(), Vec::new());
    for link in skel
        .get("links")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let ty = link.get("type").ok_or("link without 'type'")?;
        if let Some(r) = ty.get("py/reduce") {
            edge_type = r
                .get(1)
                .and_then(|t| t.get("py/tuple"))
                .and_then(|t| t.get(0))
                .and_then(Value::as_u64)
                .ok_or(format!("edge type {ty} not understood"))?;
            type_by_py_id.push(edge_type);
        } else if let Some(id) = ty.get("py/id").and_then(Value::as_u64) {
            edge_type = type_by_py_id
                .get((id as usize).wrapping_sub(1))
                .copied()
                .unwrap_or(id);
        }
        let pair = (
            local(link.get("source").ok_or("link without 'source'")?)?,
            local(link.get("target").ok_or("link without 'target'")?)?,
        );
        match edge_type {
            1 => edges.push(pair),
            2 => {
                // Legacy files store each symmetry in both directions.
                let dup = symmetries
                    .iter()
                    .any(|&(a, b)| (a, b) == pair || (b, a) == pair);
                if !dup {
                    symmetries.push(pair);
                }
            }
            _ => {}
        }
    }
    let name = skel
        .get("graph")
        .and_then(|g| g.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("Skeleton-0")
        .to_string();
    Ok(Skeleton {
        name,
        nodes: node_ids.iter().map(|&i| names[i].clone()).collect(),
        edges,
        symmetries,
    })
}

/// The `skeletons` and global `nodes` lists of the metadata JSON, as sleap-io's
/// `SkeletonSLPEncoder` writes them (each skeleton's nodes numbered after the previous').
pub(crate) fn encode(skeletons: &[Skeleton]) -> (Vec<Value>, Vec<Value>) {
    let mut nodes = Vec::new();
    let mut skels = Vec::new();
    for s in skeletons {
        let base = nodes.len();
        nodes.extend(s.nodes.iter().map(|n| json!({"name": n, "weight": 1.0})));
        let mut links = Vec::new();
        for (i, &(a, b)) in s.edges.iter().enumerate() {
            let ty = if i == 0 {
                json!({"py/reduce": [{"py/type": "sleap.skeleton.EdgeType"}, {"py/tuple": [1]}]})
            } else {
                json!({"py/id": 1})
            };
            links.push(json!({"edge_insert_idx": i, "key": 0, "source": base + a,
                              "target": base + b, "type": ty}));
        }
        for (i, &(a, b)) in s.symmetries.iter().enumerate() {
            let ty = if i == 0 {
                json!({"py/reduce": [{"py/type": "sleap.skeleton.EdgeType"}, {"py/tuple": [2]}]})
            } else {
                // sleap-io numbers the symmetry type 2 even when there are no edges.
                json!({"py/id": 2})
            };
            links.push(json!({"key": 0, "source": base + a, "target": base + b, "type": ty}));
        }
        skels.push(json!({
            "directed": true,
            "graph": {"name": s.name, "num_edges_inserted": s.edges.len()},
            "links": links,
            "multigraph": true,
            "nodes": (0..s.nodes.len()).map(|i| json!({"id": base + i})).collect::<Vec<_>>(),
        }));
    }
    (skels, nodes)
}
