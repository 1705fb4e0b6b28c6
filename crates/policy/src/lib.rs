//! Decisions without I/O: L4 authorization and L7 route matching over plain data, shared by the
//! node agent, the waypoint and the controller. Nothing here touches a socket or a clock.
