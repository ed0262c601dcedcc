//! Where a function the daemon runs itself (a local function, standalone mode) answers now. Its
//! process moves to a new port when it restarts or its code changes; deliveries look the address
//! up on every attempt, so a consumer keeps running across both.
//!
//! Each attempt holds the [`Endpoint`] it was sent to for as long as the request lasts: whoever
//! replaces an endpoint knows it is drained when it holds the last reference.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;
use http::Uri;

/// One running process of a local function.
#[derive(Debug)]
pub struct Endpoint {
    pub uri: Uri,
}

/// The endpoint one local function answers at, if any process of it is serving.
#[derive(Debug, Default)]
pub struct Route {
    current: ArcSwapOption<Endpoint>,
}

impl Route {
    /// The serving endpoint; the caller holds it while its request is in flight.
    pub fn current(&self) -> Option<Arc<Endpoint>> {
        self.current.load_full()
    }

    /// Sends new requests to `endpoint` (none: nothing serves); returns the one replaced.
    pub fn switch(&self, endpoint: Option<Arc<Endpoint>>) -> Option<Arc<Endpoint>> {
        self.current.swap(endpoint)
    }
}

/// Every local function's route, by `namespace/name`; shared by the runner and the consumers.
#[derive(Debug, Default, Clone)]
pub struct Routes(Arc<Mutex<HashMap<String, Arc<Route>>>>);

impl Routes {
    /// The route of `namespace/name`, made empty the first time it is asked for.
    pub fn route(&self, key: &str) -> Arc<Route> {
        let mut routes = self.0.lock().unwrap_or_else(|p| p.into_inner());
        routes.entry(key.to_string()).or_default().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_switched_route_is_drained_once_its_callers_let_go() {
        let routes = Routes::default();
        let route = routes.route("ns/f");
        assert!(route.current().is_none());
        let first = Arc::new(Endpoint { uri: Uri::from_static("http://127.0.0.1:1/") });
        assert!(route.switch(Some(first.clone())).is_none());
        let held = routes.route("ns/f").current().expect("serving");
        let second = Arc::new(Endpoint { uri: Uri::from_static("http://127.0.0.1:2/") });
        let old = route.switch(Some(second)).expect("the first one");
        assert!(Arc::ptr_eq(&old, &first));
        drop(first);
        assert_eq!(Arc::strong_count(&old), 2, "a request still holds the old endpoint");
        drop(held);
        assert_eq!(Arc::strong_count(&old), 1, "drained");
        assert_eq!(route.current().map(|e| e.uri.to_string()), Some("http://127.0.0.1:2/".into()));
    }
}
