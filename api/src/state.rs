//! What every handler can reach: the store (reads), the appender (writes),
//! the signing key and the clock.

use seatledger_ledger::{Appender, Clock, SigningKey, Store};
use std::sync::Arc;

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub appender: Appender,
    pub signer: Arc<SigningKey>,
    pub clock: Arc<dyn Clock>,
}
