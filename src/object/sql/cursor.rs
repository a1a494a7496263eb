//! [`SqlValue`], [`Row`] and [`Cursor`]: what a statement takes and returns.

use std::rc::Rc;

use rusqlite::types::{ToSqlOutput, ValueRef};

use super::SqlError;

/// One SQL value, as SQLite stores it.
#[derive(Clone, Debug, PartialEq)]
pub enum SqlValue {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl SqlValue {
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            SqlValue::Integer(value) => Some(*value),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            SqlValue::Real(value) => Some(*value),
            SqlValue::Integer(value) => Some(*value as f64),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            SqlValue::Text(value) => Some(value),
            _ => None,
        }
    }

    pub fn as_blob(&self) -> Option<&[u8]> {
        match self {
            SqlValue::Blob(value) => Some(value),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, SqlValue::Null)
    }

    /// Bytes the value counts against `sql.result_bytes_max`.
    pub(super) fn result_bytes(&self) -> usize {
        match self {
            SqlValue::Text(text) => text.len(),
            SqlValue::Blob(blob) => blob.len(),
            SqlValue::Null | SqlValue::Integer(_) | SqlValue::Real(_) => 8,
        }
    }

    pub(super) fn from_ref(value: ValueRef<'_>) -> SqlValue {
        match value {
            ValueRef::Null => SqlValue::Null,
            ValueRef::Integer(value) => SqlValue::Integer(value),
            ValueRef::Real(value) => SqlValue::Real(value),
            ValueRef::Text(text) => SqlValue::Text(String::from_utf8_lossy(text).into_owned()),
            ValueRef::Blob(blob) => SqlValue::Blob(blob.to_vec()),
        }
    }
}

impl rusqlite::ToSql for SqlValue {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self {
            SqlValue::Null => ValueRef::Null,
            SqlValue::Integer(value) => ValueRef::Integer(*value),
            SqlValue::Real(value) => ValueRef::Real(*value),
            SqlValue::Text(text) => ValueRef::Text(text.as_bytes()),
            SqlValue::Blob(blob) => ValueRef::Blob(blob),
        }))
    }
}

impl From<i64> for SqlValue {
    fn from(value: i64) -> SqlValue {
        SqlValue::Integer(value)
    }
}

impl From<i32> for SqlValue {
    fn from(value: i32) -> SqlValue {
        SqlValue::Integer(value.into())
    }
}

impl From<f64> for SqlValue {
    fn from(value: f64) -> SqlValue {
        SqlValue::Real(value)
    }
}

impl From<bool> for SqlValue {
    fn from(value: bool) -> SqlValue {
        SqlValue::Integer(value.into())
    }
}

impl From<&str> for SqlValue {
    fn from(value: &str) -> SqlValue {
        SqlValue::Text(value.to_string())
    }
}

impl From<String> for SqlValue {
    fn from(value: String) -> SqlValue {
        SqlValue::Text(value)
    }
}

impl From<Vec<u8>> for SqlValue {
    fn from(value: Vec<u8>) -> SqlValue {
        SqlValue::Blob(value)
    }
}

impl<T: Into<SqlValue>> From<Option<T>> for SqlValue {
    fn from(value: Option<T>) -> SqlValue {
        value.map_or(SqlValue::Null, Into::into)
    }
}

/// One result row: its values, found by column name or position.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// The statement's column names, shared by its rows.
    columns: Rc<[String]>,
    /// The values, in column order.
    values: Vec<SqlValue>,
}

impl Row {
    /// The value of the column `name` (the first, if several have it).
    pub fn get(&self, name: &str) -> Option<&SqlValue> {
        let index = self.columns.iter().position(|column| column == name)?;
        self.values.get(index)
    }

    /// The value of column `index`.
    pub fn get_index(&self, index: usize) -> Option<&SqlValue> {
        self.values.get(index)
    }

    /// The integer in column `name`; an error naming the column if it is absent or not one.
    pub fn get_i64(&self, name: &str) -> Result<i64, SqlError> {
        self.get(name)
            .and_then(SqlValue::as_i64)
            .ok_or_else(|| SqlError::WrongType {
                column: name.to_string(),
                expected: "integer",
            })
    }

    /// The text in column `name`; an error naming the column if it is absent or not text.
    pub fn get_str(&self, name: &str) -> Result<&str, SqlError> {
        self.get(name)
            .and_then(SqlValue::as_str)
            .ok_or_else(|| SqlError::WrongType {
                column: name.to_string(),
                expected: "text",
            })
    }

    /// The row as a `T`, through serde: the row is read as a map from column name to value
    /// (integers and reals as numbers, text as strings, blobs as arrays of bytes, null as
    /// null).
    pub fn deserialize<T: serde::de::DeserializeOwned>(&self) -> Result<T, SqlError> {
        let mut fields = serde_json::Map::new();
        for (column, value) in self.columns.iter().zip(&self.values) {
            let value = match value {
                SqlValue::Null => serde_json::Value::Null,
                SqlValue::Integer(integer) => serde_json::Value::from(*integer),
                SqlValue::Real(real) => serde_json::Value::from(*real),
                SqlValue::Text(text) => serde_json::Value::from(text.as_str()),
                SqlValue::Blob(blob) => serde_json::Value::from(blob.as_slice()),
            };
            fields.insert(column.clone(), value);
        }
        serde_json::from_value(serde_json::Value::Object(fields)).map_err(|error| {
            SqlError::Deserialize {
                message: error.to_string(),
            }
        })
    }

    pub fn values(&self) -> &[SqlValue] {
        &self.values
    }

    pub fn into_values(self) -> Vec<SqlValue> {
        self.values
    }
}

/// The result of one `exec`: the rows of its (last) statement, read to the end when `exec`
/// returned (bounded by `sql.result_rows_max` and `sql.result_bytes_max`), and what it cost.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Cursor {
    /// Column names of the statement.
    columns: Vec<String>,
    /// Its rows, in order.
    rows: Vec<Vec<SqlValue>>,
    /// Rows read, over every statement of the call.
    rows_read: u64,
    /// Rows written, over every statement of the call.
    rows_written: u64,
}

impl Cursor {
    pub(super) fn new(
        columns: Vec<String>,
        rows: Vec<Vec<SqlValue>>,
        (rows_read, rows_written): (u64, u64),
    ) -> Cursor {
        Cursor {
            columns,
            rows,
            rows_read,
            rows_written,
        }
    }

    pub fn column_names(&self) -> &[String] {
        &self.columns
    }

    /// Rows the call read, an estimate: per statement, the larger of the rows it returned and
    /// the rows it stepped through in full table scans (SQLite's
    /// `SQLITE_STMTSTATUS_FULLSCAN_STEP`). Index lookups count the rows they return, not the
    /// index entries they pass.
    pub fn rows_read(&self) -> u64 {
        self.rows_read
    }

    /// Rows the call inserted, updated or deleted (SQLite's change count, triggers excluded).
    pub fn rows_written(&self) -> u64 {
        self.rows_written
    }

    /// The rows as value arrays, in column order.
    pub fn raw(&self) -> &[Vec<SqlValue>] {
        &self.rows
    }

    /// The only row: an error unless there is exactly one.
    pub fn one(self) -> Result<Row, SqlError> {
        if self.rows.len() != 1 {
            return Err(SqlError::NotOneRow {
                rows: self.rows.len(),
            });
        }
        self.into_iter()
            .next()
            .ok_or(SqlError::NotOneRow { rows: 0 })
    }

    pub fn to_vec(self) -> Vec<Row> {
        self.into_iter().collect()
    }

    /// Every row as a `T` (see [`Row::deserialize`]).
    pub fn query_as<T: serde::de::DeserializeOwned>(self) -> Result<Vec<T>, SqlError> {
        self.into_iter().map(|row| row.deserialize()).collect()
    }
}

impl IntoIterator for Cursor {
    type Item = Row;
    type IntoIter = Rows;

    fn into_iter(self) -> Rows {
        Rows {
            columns: self.columns.into(),
            rows: self.rows.into_iter(),
        }
    }
}

/// The rows of a [`Cursor`], in order.
#[derive(Debug)]
pub struct Rows {
    /// Column names, shared by every row.
    columns: Rc<[String]>,
    /// The rows not yet taken.
    rows: std::vec::IntoIter<Vec<SqlValue>>,
}

impl Iterator for Rows {
    type Item = Row;

    fn next(&mut self) -> Option<Row> {
        let values = self.rows.next()?;
        Some(Row {
            columns: self.columns.clone(),
            values,
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.rows.size_hint()
    }
}
