"""cnm-macvlan: endpoints as macvlan links on a host interface (a third-party cnm driver)."""

from cnm_macvlan.driver import MacvlanDriver, MacvlanOptions

__all__ = ["MacvlanDriver", "MacvlanOptions"]
