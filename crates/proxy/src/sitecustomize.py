# Written by mpc-did (crates/proxy) into a run's private link directory and put first on
# PYTHONPATH, so Python imports it at start-up (site.py). It makes an unmodified MPyC use
# the proxy's Unix-domain sockets instead of TCP ports (spec/security.md §10):
#
#   create_server(port=-1)                      -> create_unix_server(<dir>/mpyc.sock)
#   create_connection('mpc-did-link.invalid', j) -> create_unix_connection(<dir>/party-j.sock)
#
# The directory is mode 0700, so no other user can connect to either end. Without this file
# MPyC cannot run against these arguments at all: port -1 makes its listener fail at once,
# and the `.invalid` host never resolves.
#
# Fail closed, whatever MPyC's options say (a program argument such as `-B 7000` that the
# offer check missed, a config file): no TCP listener and no connection by MPyC to
# anything but a link socket of this run. Either stops the program at once with a message
# (exit status 77, EX_NOPERM); raising would not do, MPyC retries a failed dial forever.
# Listeners and connections the program itself makes (not MPyC's code) are left to asyncio.
import os
import sys

_LINK_HOST = 'mpc-did-link.invalid'
_REFUSED_STATUS = 77


def _refuse(what):
    """Stop the program: MPyC's networking is not the launcher's."""
    try:
        sys.stdout.flush()
    except Exception:
        pass
    sys.stderr.write(
        f'mpc-did: stopped: MPyC would {what} instead of using the private link sockets of '
        'mpc-did; its networking options (-B, -C, -P, -M, -I, --base-port, ...) were changed, '
        'probably by a program argument. mpc-did sets them itself (spec/security.md §10).\n')
    sys.stderr.flush()
    os._exit(_REFUSED_STATUS)


def _called_by_mpyc():
    """Whether the code calling into the event loop (past asyncio's own) is MPyC's."""
    frame = sys._getframe(1)
    while frame is not None:
        g = frame.f_globals
        name = g.get('__name__') or ''
        if g is globals() or name == 'asyncio' or name.startswith('asyncio.'):
            frame = frame.f_back
            continue
        return name == 'mpyc' or name.startswith('mpyc.')
    return False


def _mpc_did_install():
    link_dir = os.environ.get('MPC_DID_LINK_DIR')
    if not link_dir or not os.path.isdir(link_dir):
        return
    import asyncio.base_events

    base = asyncio.base_events.BaseEventLoop
    if getattr(base, '_mpc_did_links', None) == link_dir:
        return
    tcp_server, tcp_connection = base.create_server, base.create_connection

    async def create_server(self, protocol_factory, host=None, port=None, **kw):
        if host is None and port == -1 and kw.get('sock') is None:
            kw.pop('reuse_address', None)
            kw.pop('reuse_port', None)
            kw.pop('family', None)
            kw.pop('flags', None)
            path = os.path.join(link_dir, 'mpyc.sock')
            return await self.create_unix_server(protocol_factory, path=path, **kw)
        # MPyC's only listener is port -1 above; any other of MPyC's is a TCP port open to
        # the network. A listener the program itself opens is its own business.
        if _called_by_mpyc():
            _refuse(f'listen on TCP {host or "every interface"}, port {port}')
        return await tcp_server(self, protocol_factory, host, port, **kw)

    async def create_connection(self, protocol_factory, host=None, port=None, **kw):
        if host == _LINK_HOST:
            path = None
            if isinstance(port, int) or (isinstance(port, str) and port.isdigit()):
                path = os.path.join(link_dir, f'party-{int(port)}.sock')
            # The proxy binds every link before the program starts: a missing one means the
            # ports were changed, and MPyC would retry it forever.
            if path is None or not os.path.exists(path):
                _refuse(f'dial link {port!r}, which this run does not have')
            for key in ('family', 'proto', 'flags', 'local_addr', 'happy_eyeballs_delay',
                        'interleave', 'all_errors'):
                kw.pop(key, None)
            return await self.create_unix_connection(protocol_factory, path=path, **kw)
        if _called_by_mpyc():
            _refuse(f'connect over TCP to {host}:{port}')
        return await tcp_connection(self, protocol_factory, host, port, **kw)

    base.create_server = create_server
    base.create_connection = create_connection
    base._mpc_did_links = link_dir
    # uvloop's loop is not a BaseEventLoop: MPyC must use asyncio's own.
    os.environ['MPYC_NOUVLOOP'] = '1'
    # Tell the launcher the links are in place (it stops a program that never says so).
    with open(os.path.join(link_dir, f'loaded-{os.getpid()}'), 'w'):
        pass


def _chain_next_sitecustomize():
    """Run the sitecustomize this file shadows (e.g. Debian's), as Python would have."""
    import importlib.machinery
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    sys.path[:] = rest
    spec = importlib.machinery.PathFinder.find_spec('sitecustomize', rest)
    if spec is not None and spec.loader is not None:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)


_mpc_did_install()
_chain_next_sitecustomize()
