//! The TCP front end: hickory-server's `RequestHandler` over the resolver, building the same
//! reply as the raw-packet path ([`crate::answer::reply`]). TCP carries few queries, so it stays
//! on hickory-server, which does its framing and idle timeouts ([`crate::server`] registers the
//! listeners).
//!
//! As on UDP, a client outside `allow_clients` ([`crate::clients`]) is answered REFUSED and
//! counted, and new dummies are charged to the tenant `client:ADDRESS` ([`crate::quota`]).

use std::sync::Arc;

use hickory_proto::op::{Header, HeaderCounts, Metadata, Query, ResponseCode};
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;

use crate::answer::reply;
use crate::clients::AllowList;
use crate::metrics::Metrics;
use crate::resolve::Resolver;

/// hickory-server's request handler over the resolver.
#[derive(Debug, Clone)]
pub struct Handler {
    resolver: Arc<Resolver>,
    payload: u16,
    allow: Option<Arc<AllowList>>,
}

impl Handler {
    /// A handler that advertises `payload` as its EDNS UDP size.
    pub fn new(resolver: Arc<Resolver>, payload: u16) -> Self {
        Self {
            resolver,
            payload,
            allow: None,
        }
    }

    /// The same handler answering only the clients `allow` allows (the others REFUSED).
    #[must_use]
    pub fn allowing(mut self, allow: Option<Arc<AllowList>>) -> Self {
        self.allow = allow;
        self
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let queries: Vec<Query> = request
            .queries
            .queries()
            .iter()
            .map(|q| q.original().clone())
            .collect();
        let src = request.src();
        if self.allow.as_deref().is_some_and(|a| !a.allows(src.ip())) {
            Metrics::inc(&self.resolver.metrics().refused_clients);
            let mut metadata = Metadata::response_from_request(&request.metadata);
            metadata.response_code = ResponseCode::Refused;
            let response =
                MessageResponseBuilder::new(&request.queries, None).build_no_records(metadata);
            return match response_handle.send_response(response).await {
                Ok(info) => info,
                Err(error) => {
                    tracing::debug!(%error, "cannot send a DNS response");
                    ResponseInfo::from(Header {
                        metadata,
                        counts: HeaderCounts::default(),
                    })
                }
            };
        }
        let tenant: Arc<str> = Arc::from(format!("client:{}", src.ip()));
        let r = crate::quota::scope(
            tenant,
            reply(
                &self.resolver,
                &request.metadata,
                &queries,
                request.edns.as_ref(),
                self.payload,
            ),
        )
        .await;
        let mut builder = MessageResponseBuilder::new(&request.queries, None);
        if let Some(e) = r.edns.as_ref() {
            builder.edns(e);
        }
        let response = builder.build(
            r.metadata,
            r.answer.answers.iter(),
            r.answer.authorities.iter(),
            std::iter::empty(),
            std::iter::empty(),
        );
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(error) => {
                tracing::debug!(%error, "cannot send a DNS response");
                let mut metadata = Metadata::response_from_request(&request.metadata);
                metadata.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header {
                    metadata,
                    counts: HeaderCounts::default(),
                })
            }
        }
    }
}
