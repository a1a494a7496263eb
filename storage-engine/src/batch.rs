//! The atomic unit of writing: every op of one [`Batch`] survives a crash, or none does.

/// One change inside a batch. Ops apply in the order they were added.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Set `key` to `value`.
    Put { key: Vec<u8>, value: Vec<u8> },
    /// Remove `key`; removing an absent key is not an error.
    Delete { key: Vec<u8> },
    /// Remove every key of the object (its alarm is kept).
    DeleteAll,
    /// Set the object's one alarm, replacing any earlier one.
    SetAlarm { time_ms: i64 },
    /// Remove the object's alarm, if it has one.
    DeleteAlarm,
}

/// An ordered list of [`Op`]s on one object, committed atomically by `Store::commit`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    /// The ops in the order they apply.
    ops: Vec<Op>,
}

impl Batch {
    pub fn new() -> Batch {
        Batch::default()
    }

    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> &mut Batch {
        self.ops.push(Op::Put {
            key: key.into(),
            value: value.into(),
        });
        self
    }

    pub fn delete(&mut self, key: impl Into<Vec<u8>>) -> &mut Batch {
        self.ops.push(Op::Delete { key: key.into() });
        self
    }

    pub fn delete_all(&mut self) -> &mut Batch {
        self.ops.push(Op::DeleteAll);
        self
    }

    pub fn set_alarm(&mut self, time_ms: i64) -> &mut Batch {
        self.ops.push(Op::SetAlarm { time_ms });
        self
    }

    pub fn delete_alarm(&mut self) -> &mut Batch {
        self.ops.push(Op::DeleteAlarm);
        self
    }

    pub fn push(&mut self, op: Op) -> &mut Batch {
        self.ops.push(op);
        self
    }

    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    pub fn into_ops(self) -> Vec<Op> {
        self.ops
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }
}
