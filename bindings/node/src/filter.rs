//! `NativeFilter`, the filter object both addons take (watches, fleet queries).

use napi::bindgen_prelude::*;
use napi_derive::napi;
use sfc_proto::model::{Filter, Health, Status as InstanceStatus};

use crate::boundary::invalid;

/// Selects the instances a watch reports on; empty fields match everything.
#[napi(object)]
pub struct NativeFilter {
    pub group: Option<String>,
    pub service: Option<String>,
    /// `online`, `offline` or `left`.
    pub status: Option<String>,
    /// `passing`, `warning` or `critical`.
    pub health: Option<String>,
    pub tag: Option<String>,
}

impl NativeFilter {
    pub fn into_filter(self) -> Result<Filter> {
        Ok(Filter {
            group: self.group,
            service: self.service,
            status: self
                .status
                .map(|s| {
                    s.parse::<InstanceStatus>()
                        .map_err(|e| invalid("filter.status", e))
                })
                .transpose()?,
            health: self
                .health
                .map(|h| h.parse::<Health>().map_err(|e| invalid("filter.health", e)))
                .transpose()?,
            tag: self.tag,
        })
    }
}
