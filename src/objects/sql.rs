//! `sql`: an object's SQL database, over HTTP: statements from the client, run by the object.
//!
//! `POST /exec` with `{"query": string, "params"?: [value]}` runs one statement (or a script of
//! several, without params) and answers 200
//! `{"columns":[name],"rows":[[value]],"rowsRead":n,"rowsWritten":n}`. `POST /transaction`
//! with `{"statements":[{"query","params"?}]}` runs them all in one `transaction_sync`: 200
//! `{"results":[…]}` with one answer per statement, or, if one fails, none of them applied and
//! 400 `{"error","statement":index}`. `GET /size` answers `{"databaseSize":bytes}`.
//!
//! Values as JSON: null, an integer (i64), a real, a string (text), and `{"blob":base64}` for a
//! blob; `true`/`false` are bound as 1/0. A statement that fails is the client's error, 400
//! `{"error": message}` (SQLite's message, or which limit it hit), except when the database
//! itself fails (500). Writes of statements before a failed one stay (`/exec` of a script
//! commits what ran, like the hosted runtime: use `/transaction` for all or nothing).

use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::http::{Method, Request, Response};
use crate::object::{Cursor, DurableObject, ObjectContext, ObjectError, SqlError, SqlValue};

/// Statements one `/transaction` request may hold.
const TRANSACTION_STATEMENTS_MAX: usize = 1_000;

pub struct SqlDatabase {
    /// Storage of this object, which holds its database.
    context: ObjectContext,
}

/// One statement as posted.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Statement {
    query: String,
    #[serde(default)]
    params: Vec<Value>,
}

/// The body of `POST /transaction`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Transaction {
    statements: Vec<Statement>,
}

/// A JSON parameter as a SQL value; `None` for one that has no SQL form (an array, an object
/// other than `{"blob": base64}`).
fn to_sql(value: &Value) -> Option<SqlValue> {
    Some(match value {
        Value::Null => SqlValue::Null,
        Value::Bool(flag) => SqlValue::Integer(i64::from(*flag)),
        Value::Number(number) => match number.as_i64() {
            Some(integer) => SqlValue::Integer(integer),
            None => SqlValue::Real(number.as_f64()?),
        },
        Value::String(text) => SqlValue::Text(text.clone()),
        Value::Object(fields) if fields.len() == 1 => {
            let encoded = fields.get("blob")?.as_str()?;
            SqlValue::Blob(
                base64::engine::general_purpose::STANDARD
                    .decode(encoded)
                    .ok()?,
            )
        }
        Value::Array(_) | Value::Object(_) => return None,
    })
}

/// A SQL value as JSON (a real that JSON cannot hold, NaN or infinite, is null).
fn to_json(value: &SqlValue) -> Value {
    match value {
        SqlValue::Null => Value::Null,
        SqlValue::Integer(integer) => Value::from(*integer),
        SqlValue::Real(real) => {
            serde_json::Number::from_f64(*real).map_or(Value::Null, Value::Number)
        }
        SqlValue::Text(text) => Value::String(text.clone()),
        SqlValue::Blob(blob) => {
            let mut fields = Map::new();
            let encoded = base64::engine::general_purpose::STANDARD.encode(blob);
            fields.insert("blob".to_string(), Value::String(encoded));
            Value::Object(fields)
        }
    }
}

/// A cursor as its JSON answer, fields in a fixed order.
fn cursor_json(cursor: &Cursor) -> Value {
    let rows: Vec<Value> = cursor
        .raw()
        .iter()
        .map(|row| Value::Array(row.iter().map(to_json).collect()))
        .collect();
    let mut fields = Map::new();
    fields.insert("columns".to_string(), json!(cursor.column_names()));
    fields.insert("rows".to_string(), Value::Array(rows));
    fields.insert("rowsRead".to_string(), json!(cursor.rows_read()));
    fields.insert("rowsWritten".to_string(), json!(cursor.rows_written()));
    Value::Object(fields)
}

/// A JSON object answer, fields in insertion order.
fn answer(status: u16, value: &Value) -> Result<Response, ObjectError> {
    Ok(Response::json_of(status, value)?)
}

/// The answer to a failed statement: the client's (400) unless the database failed.
fn failure(error: &SqlError, statement: Option<usize>) -> Result<Response, ObjectError> {
    if !error.is_client_error() {
        // The server's failure (500), or a write refused to a read-only request (403).
        return Err(ObjectError::from(error.clone()));
    }
    let mut fields = Map::new();
    fields.insert("error".to_string(), Value::String(error.to_string()));
    if let Some(index) = statement {
        fields.insert("statement".to_string(), json!(index));
    }
    answer(400, &Value::Object(fields))
}

/// The parameters of `statement`, or the 400 answer naming the first bad one.
fn parameters(statement: &Statement) -> Result<Vec<SqlValue>, Response> {
    statement
        .params
        .iter()
        .enumerate()
        .map(|(index, value)| {
            to_sql(value).ok_or_else(|| {
                let message = format!(
                    "params[{index}] must be null, a number, a string, a boolean or {{\"blob\": base64}}"
                );
                Response::json_error(400, &message)
            })
        })
        .collect()
}

impl SqlDatabase {
    fn exec(&self, body: &[u8]) -> Result<Response, ObjectError> {
        let statement: Statement = match serde_json::from_slice(body) {
            Ok(statement) => statement,
            Err(error) => return Ok(Response::json_error(400, &format!("invalid JSON: {error}"))),
        };
        let params = match parameters(&statement) {
            Ok(params) => params,
            Err(response) => return Ok(response),
        };
        match self.context.storage().sql().exec(&statement.query, &params) {
            Ok(cursor) => answer(200, &cursor_json(&cursor)),
            Err(error) => failure(&error, None),
        }
    }

    fn transaction(&self, body: &[u8]) -> Result<Response, ObjectError> {
        let transaction: Transaction = match serde_json::from_slice(body) {
            Ok(transaction) => transaction,
            Err(error) => return Ok(Response::json_error(400, &format!("invalid JSON: {error}"))),
        };
        if transaction.statements.len() > TRANSACTION_STATEMENTS_MAX {
            let message = format!("at most {TRANSACTION_STATEMENTS_MAX} statements");
            return Ok(Response::json_error(400, &message));
        }
        let mut bound = Vec::with_capacity(transaction.statements.len());
        for statement in &transaction.statements {
            match parameters(statement) {
                Ok(params) => bound.push((statement.query.as_str(), params)),
                Err(response) => return Ok(response),
            }
        }
        let storage = self.context.storage();
        let sql = storage.sql();
        let outcome = storage.transaction_sync(|| {
            let mut results = Vec::with_capacity(bound.len());
            for (index, (query, params)) in bound.iter().enumerate() {
                match sql.exec(query, params) {
                    Ok(cursor) => results.push(cursor_json(&cursor)),
                    Err(error) => {
                        return Err(Failed {
                            error,
                            statement: Some(index),
                        })
                    }
                }
            }
            Ok(results)
        });
        match outcome {
            Ok(results) => answer(200, &json!({ "results": results })),
            Err(failed) => failure(&failed.error, failed.statement),
        }
    }
}

/// A failed transaction: the error, and the index of the statement that failed (none when the
/// transaction itself failed to begin or commit).
struct Failed {
    error: SqlError,
    statement: Option<usize>,
}

impl From<SqlError> for Failed {
    fn from(error: SqlError) -> Failed {
        Failed {
            error,
            statement: None,
        }
    }
}

impl DurableObject for SqlDatabase {
    fn new(context: ObjectContext) -> SqlDatabase {
        SqlDatabase { context }
    }

    async fn fetch(&self, request: Request) -> Result<Response, ObjectError> {
        match (request.method, request.path.as_str()) {
            (Method::Post, "/exec") => self.exec(&request.body),
            (Method::Post, "/transaction") => self.transaction(&request.body),
            (Method::Get, "/size") => {
                let size = self.context.storage().sql().database_size();
                answer(200, &json!({ "databaseSize": size }))
            }
            (_, "/exec" | "/transaction") => Ok(Response::json_error(405, "use POST")),
            _ => Ok(Response::not_found()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_through_json() {
        for value in [
            SqlValue::Null,
            SqlValue::Integer(-3),
            SqlValue::Real(0.5),
            SqlValue::Text("é".to_string()),
            SqlValue::Blob(vec![0, 255, 7]),
        ] {
            assert_eq!(to_sql(&to_json(&value)), Some(value));
        }
        assert_eq!(to_sql(&json!(true)), Some(SqlValue::Integer(1)));
        assert_eq!(to_sql(&json!([1])), None);
        assert_eq!(to_sql(&json!({"blob": "not base64!"})), None);
    }
}
