//! Which connection, and which end of it, a JSON report is for. wstrace
//! follows both ends of a connection whose client runs on the traced host
//! (with or without `--port`): the server's socket (`side: "server"`, its
//! local port the server's) and the client's (`side: "client"`, its remote
//! port the server's). A test that counts or picks reports says which.
use serde_json::Value;

fn port_of(addr: &str) -> Option<u16> {
    addr.rsplit_once(':')?.1.parse().ok()
}

/// Port of a report's `local` ("127.0.0.1:80" or "[::1]:80").
pub fn local_port(r: &Value) -> Option<u16> {
    port_of(r.get("local")?.as_str()?)
}

/// Port of a report's `remote` ("127.0.0.1:80" or "[::1]:80").
pub fn remote_port(r: &Value) -> Option<u16> {
    port_of(r.get("remote")?.as_str()?)
}

/// A server-side report (the local end wrote the 101).
pub fn is_server_side(r: &Value) -> bool {
    r.get("side").and_then(Value::as_str) == Some("server")
}

/// A client-side report (the local end read the 101).
pub fn is_client_side(r: &Value) -> bool {
    r.get("side").and_then(Value::as_str) == Some("client")
}

/// The server-side report of a server on local port `port`.
pub fn is_server_on(r: &Value, port: u16) -> bool {
    is_server_side(r) && local_port(r) == Some(port)
}

/// A client-side report of a connection to server port `port`.
pub fn is_client_of(r: &Value, port: u16) -> bool {
    is_client_side(r) && remote_port(r) == Some(port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ends_of_one_connection() {
        let server: Value = serde_json::json!({
            "side": "server", "local": "127.0.0.1:8080", "remote": "127.0.0.1:40000"
        });
        let client: Value = serde_json::json!({
            "side": "client", "local": "[::1]:40000", "remote": "[::1]:8080"
        });
        assert!(is_server_on(&server, 8080) && !is_client_of(&server, 8080));
        assert!(is_client_of(&client, 8080) && !is_server_on(&client, 8080));
        assert_eq!(local_port(&client), Some(40000));
        assert_eq!(remote_port(&server), Some(40000));
        assert!(!is_server_side(
            &serde_json::json!({"local": "127.0.0.1:1"})
        ));
    }
}
