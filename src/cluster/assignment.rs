//! The assignment: which node owns each partition, and since which generation.
//!
//! It is one value (the key `assignment` of the bucket `stead_cluster`), changed only by a
//! compare-and-set on the key's revision, by the node that holds the rebalancer key. Each
//! change makes the next generation; a partition that changed owner in it gets that generation
//! as its epoch (`since`), which the new owner's takeover record carries. A node that owned a
//! partition, lost it and got it back sees a new `since`, so it rebuilds the partition even if
//! it never saw the generations between.
//!
//! Wire form: `{"generation":3,"nodes":["a","b"],"partitions":[[0,1],[1,3]]}`, each partition
//! `[index into nodes, since]`.

use serde::{Deserialize, Serialize};

/// The owner of every partition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub generation: u64,
    pub nodes: Vec<String>,
    /// Per partition: the owner's index in `nodes` and the generation it got the partition at.
    pub partitions: Vec<(u32, u64)>,
}

impl Assignment {
    /// The assignment a value of the key holds, if it is one for `partitions` partitions.
    pub fn parse(value: &[u8], partitions: u32) -> Option<Assignment> {
        let assignment: Assignment = serde_json::from_slice(value).ok()?;
        let valid = assignment.partitions.len() == partitions as usize
            && assignment
                .partitions
                .iter()
                .all(|(node, since)| (*node as usize) < assignment.nodes.len() && *since > 0);
        valid.then_some(assignment)
    }

    /// The key's value.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The owner of `partition` and the generation it got it at.
    pub fn owner(&self, partition: u32) -> Option<(&str, u64)> {
        let (node, since) = self.partitions.get(partition as usize)?;
        Some((self.nodes.get(*node as usize)?.as_str(), *since))
    }

    /// Partitions `node` owns, with their `since`.
    pub fn owned_by(&self, node: &str) -> Vec<(u32, u64)> {
        let Some(index) = self.nodes.iter().position(|known| known == node) else {
            return Vec::new();
        };
        self.partitions
            .iter()
            .enumerate()
            .filter(|(_, (owner, _))| *owner as usize == index)
            .map(|(partition, (_, since))| (partition as u32, *since))
            .collect()
    }

    /// The next assignment for the nodes `live` (those that may own partitions), or None when
    /// `current` needs no change. Partitions of nodes not live go to the live node owning the
    /// fewest; then, while two live nodes' counts differ by more than one, the most loaded
    /// gives its highest partition to the least loaded (ties by name). Nothing moves
    /// otherwise, so a cluster whose nodes stay up keeps its assignment. The next generation
    /// is above `floor` too (the highest a live node applied), so it never goes back even if
    /// the key was lost.
    pub fn rebalance(
        current: Option<&Assignment>,
        (partitions, floor): (u32, u64),
        live: &[String],
    ) -> Option<Assignment> {
        let mut live: Vec<&str> = live.iter().map(String::as_str).collect();
        live.sort_unstable();
        live.dedup();
        if live.is_empty() {
            return None;
        }
        // Each partition's owner by name (None: no node yet, or a node no longer live).
        let mut owners: Vec<Option<&str>> = match current {
            Some(current) => (0..partitions)
                .map(|partition| {
                    current
                        .owner(partition)
                        .map(|(node, _)| node)
                        .filter(|node| live.contains(node))
                })
                .collect(),
            None => vec![None; partitions as usize],
        };
        let mut counts: Vec<usize> = live
            .iter()
            .map(|node| owners.iter().filter(|owner| **owner == Some(*node)).count())
            .collect();
        let least = |counts: &[usize]| {
            (0..counts.len())
                .min_by_key(|index| (counts[*index], *index))
                .unwrap_or(0)
        };
        for owner in &mut owners {
            if owner.is_none() {
                let index = least(&counts);
                *owner = Some(live[index]);
                counts[index] += 1;
            }
        }
        loop {
            let low = least(&counts);
            let high = (0..counts.len())
                .max_by_key(|index| (counts[*index], std::cmp::Reverse(*index)))
                .unwrap_or(0);
            if counts[high] <= counts[low] + 1 {
                break;
            }
            let Some(moved) = owners.iter().rposition(|owner| *owner == Some(live[high])) else {
                break;
            };
            owners[moved] = Some(live[low]);
            counts[high] -= 1;
            counts[low] += 1;
        }
        let generation = current
            .map_or(0, |current| current.generation)
            .max(floor)
            .saturating_add(1);
        let nodes: Vec<String> = live.iter().map(|node| node.to_string()).collect();
        let next = Assignment {
            generation,
            partitions: owners
                .iter()
                .enumerate()
                .map(|(partition, owner)| {
                    let owner = owner.unwrap_or(live[0]);
                    let index = live.iter().position(|node| *node == owner).unwrap_or(0);
                    // A partition that stays with its owner keeps its epoch.
                    let since = current
                        .and_then(|current| current.owner(partition as u32))
                        .filter(|(node, _)| *node == owner)
                        .map_or(generation, |(_, since)| since);
                    (index as u32, since)
                })
                .collect(),
            nodes,
        };
        let unchanged = current.is_some_and(|current| {
            (0..partitions).all(|partition| current.owner(partition) == next.owner(partition))
        });
        (!unchanged).then_some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::Assignment;

    fn names(nodes: &[&str]) -> Vec<String> {
        nodes.iter().map(|node| node.to_string()).collect()
    }

    fn counts(assignment: &Assignment) -> Vec<(String, usize)> {
        assignment
            .nodes
            .iter()
            .map(|node| (node.clone(), assignment.owned_by(node).len()))
            .collect()
    }

    #[test]
    fn the_first_node_gets_every_partition_and_a_second_gets_half() {
        let first = Assignment::rebalance(None, (8, 0), &names(&["a"])).expect("made");
        assert_eq!(first.generation, 1);
        assert_eq!(first.owned_by("a").len(), 8);
        assert_eq!(
            Assignment::rebalance(Some(&first), (8, 0), &names(&["a"])),
            None
        );
        let second =
            Assignment::rebalance(Some(&first), (8, 0), &names(&["b", "a"])).expect("moved");
        assert_eq!(second.generation, 2);
        assert_eq!(counts(&second), vec![("a".into(), 4), ("b".into(), 4)]);
        // The highest partitions moved, with the new generation; the rest kept theirs.
        assert_eq!(second.owner(0), Some(("a", 1)));
        assert_eq!(second.owner(7), Some(("b", 2)));
        let parsed = Assignment::parse(second.to_json().as_bytes(), 8).expect("parsed");
        assert_eq!(parsed, second);
        assert_eq!(Assignment::parse(second.to_json().as_bytes(), 9), None);
        assert_eq!(Assignment::parse(b"{}", 8), None);
    }

    #[test]
    fn a_dead_nodes_partitions_go_to_the_least_loaded() {
        let three = Assignment::rebalance(None, (9, 0), &names(&["a", "b", "c"])).expect("made");
        assert_eq!(
            counts(&three),
            vec![("a".into(), 3), ("b".into(), 3), ("c".into(), 3)]
        );
        let c_had = three.owned_by("c");
        let two = Assignment::rebalance(Some(&three), (9, 0), &names(&["a", "b"])).expect("moved");
        let counted = counts(&two);
        assert_eq!(counted.iter().map(|(_, n)| n).sum::<usize>(), 9);
        assert!(
            counted.iter().all(|(_, n)| (4..=5).contains(n)),
            "{counted:?}"
        );
        for (partition, _) in c_had {
            assert_eq!(two.owner(partition).map(|(_, since)| since), Some(2));
        }
        // a and b kept what they had, with their epochs.
        for (partition, since) in three.owned_by("a") {
            assert_eq!(two.owner(partition), Some(("a", since)));
        }
        // c back: it gets a share again, nobody else loses more than needed.
        let back =
            Assignment::rebalance(Some(&two), (9, 0), &names(&["a", "b", "c"])).expect("moved");
        assert_eq!(
            counts(&back),
            vec![("a".into(), 3), ("b".into(), 3), ("c".into(), 3)]
        );
        assert_eq!(Assignment::rebalance(Some(&back), (9, 0), &[]), None);
        // A lost key: the next generation is above what the nodes applied.
        let again = Assignment::rebalance(None, (9, 7), &names(&["a"])).expect("made");
        assert_eq!(again.generation, 8);
    }
}
