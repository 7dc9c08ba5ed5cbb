//! Sorted vectors merged in place: the engine's compact per-block sets.
//!
//! Sets with one entry per block (the blocks a backup knows, the blocks gc finds referenced)
//! are kept as one vector sorted by block id and searched by binary search: an entry costs
//! its own size, where a hash table costs about twice that, and three times while it grows.
//! New entries arrive in batches, sorted and merged in from the back, so the vector never
//! exists twice.

/// Merges `add` (sorted by `key`, no key already in `into`) into `into` (sorted by `key`).
pub fn merge_into<T: Copy, K: Ord>(into: &mut Vec<T>, add: &[T], key: impl Fn(&T) -> K) {
    if add.is_empty() {
        return;
    }
    let (mut old, mut new) = (into.len(), add.len());
    into.reserve_exact(new);
    into.extend_from_slice(add);
    let mut to = old + new;
    while new > 0 {
        to -= 1;
        if old > 0 && key(&into[old - 1]) > key(&add[new - 1]) {
            into[to] = into[old - 1];
            old -= 1;
        } else {
            into[to] = add[new - 1];
            new -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_keeps_the_order_whatever_the_interleaving() {
        let mut v = vec![2, 4, 6, 8];
        merge_into(&mut v, &[1, 5, 9, 10], |x| *x);
        assert_eq!(v, vec![1, 2, 4, 5, 6, 8, 9, 10]);
        merge_into(&mut v, &[0], |x| *x);
        merge_into(&mut v, &[], |x| *x);
        assert_eq!(v[0], 0);
        let mut empty: Vec<u32> = Vec::new();
        merge_into(&mut empty, &[3, 7], |x| *x);
        assert_eq!(empty, vec![3, 7]);
        let mut pairs = vec![(1, 'a'), (3, 'c')];
        merge_into(&mut pairs, &[(2, 'b')], |p| p.0);
        assert_eq!(pairs, vec![(1, 'a'), (2, 'b'), (3, 'c')]);
    }
}
