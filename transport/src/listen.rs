//! Starting to listen: every address a swarm was asked to listen on, as the system bound it.

use std::time::Duration;

use futures::StreamExt;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, Swarm};

/// Why listening failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {reason}")]
pub struct ListenError {
    /// The address.
    pub addr: Multiaddr,
    /// Why.
    pub reason: String,
}

/// Listens on each of `addrs` and returns the addresses bound (the ports the system chose). An
/// unspecified address (`0.0.0.0`) listens on every interface, each reported on its own: what is
/// reported within a moment is taken too.
pub async fn listen_on_all<B: NetworkBehaviour>(
    swarm: &mut Swarm<B>,
    addrs: &[Multiaddr],
) -> Result<Vec<Multiaddr>, ListenError> {
    for addr in addrs {
        swarm.listen_on(addr.clone()).map_err(|e| ListenError {
            addr: addr.clone(),
            reason: e.to_string(),
        })?;
    }
    let failed = |reason: String| ListenError {
        addr: addrs.first().cloned().unwrap_or_else(Multiaddr::empty),
        reason,
    };
    let mut bound = Vec::new();
    while bound.len() < addrs.len() {
        match swarm.select_next_some().await {
            SwarmEvent::NewListenAddr { address, .. } => bound.push(address),
            SwarmEvent::ListenerError { error, .. }
            | SwarmEvent::ListenerClosed {
                reason: Err(error), ..
            } => return Err(failed(error.to_string())),
            _ => {}
        }
    }
    let unspecified = addrs.iter().any(|a| {
        a.iter().any(|p| match p {
            Protocol::Ip4(ip) => ip.is_unspecified(),
            Protocol::Ip6(ip) => ip.is_unspecified(),
            _ => false,
        })
    });
    if unspecified {
        let settle = tokio::time::sleep(Duration::from_millis(300));
        tokio::pin!(settle);
        loop {
            tokio::select! {
                _ = &mut settle => break,
                event = swarm.select_next_some() => {
                    if let SwarmEvent::NewListenAddr { address, .. } = event {
                        bound.push(address);
                    }
                }
            }
        }
    }
    Ok(bound)
}
