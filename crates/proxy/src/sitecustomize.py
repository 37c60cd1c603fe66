# Written by mpc-did (crates/proxy) into a run's private link directory and put first on
# PYTHONPATH, so Python imports it at start-up (site.py). It makes an unmodified MPyC use
# the proxy's Unix-domain sockets instead of TCP ports (spec/security.md §10):
#
#   create_server(port=-1)                      -> create_unix_server(<dir>/mpyc.sock)
#   create_connection('mpc-did-link.invalid', j) -> create_unix_connection(<dir>/party-j.sock)
#
# The directory is mode 0700, so no other user can connect to either end. Any other host or
# port is left to asyncio. Without this file MPyC cannot run against these arguments at all:
# port -1 makes its listener fail at once, and the `.invalid` host never resolves.
import os
import sys


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
        if host is None and port == -1:
            kw.pop('reuse_address', None)
            kw.pop('reuse_port', None)
            kw.pop('family', None)
            kw.pop('flags', None)
            path = os.path.join(link_dir, 'mpyc.sock')
            return await self.create_unix_server(protocol_factory, path=path, **kw)
        return await tcp_server(self, protocol_factory, host, port, **kw)

    async def create_connection(self, protocol_factory, host=None, port=None, **kw):
        if host == 'mpc-did-link.invalid':
            for key in ('family', 'proto', 'flags', 'local_addr', 'happy_eyeballs_delay',
                        'interleave', 'all_errors'):
                kw.pop(key, None)
            path = os.path.join(link_dir, f'party-{int(port)}.sock')
            return await self.create_unix_connection(protocol_factory, path=path, **kw)
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
