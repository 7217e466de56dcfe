// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

/// @title SwarmLedger: the roster and the round book of one swarm
/// @notice The only state the nodes of a swarm share. It records who is in the swarm
///         (account, gRPC endpoint, TLS certificate fingerprint), which round is open,
///         who joined it with which commitment, who was dropped, and the digest every
///         round agreed on, and how many nodes are still training (registered and not
///         finished), so that a round never waits for a node that is done. Weights never
///         come here.
/// @dev Storage is laid out so that a participant that does not finalize a round pays
///      about three new slots to join and one warm update to report; everything paid once
///      per round (close, finalize, expire) is paid by whoever triggers it.
contract SwarmLedger {
    // ------------------------------------------------------------------ types

    /// @notice A rule is an id plus four parameters; see swarmnode/rules.py for the table.
    struct Rule {
        uint32 id;
        uint64[4] params;
    }

    /// @notice Swarm parameters, fixed at deploy.
    struct Params {
        uint16 minPeers;
        uint16 maxPeers;
        uint64 joinWindow;
        uint64 transferDeadline;
        uint64 roundDeadline;
        Rule mergeRule;
        Rule syncPolicy;
        bytes32 initialModelDigest;
        bool restricted;
        /// @dev Whether each segment has a second owner that checks the merge (off: one owner,
        ///      fewer bytes, a merge nobody checks; docs/trust.md#unchecked-merge).
        bool checkedMerge;
        /// @dev Updates summed under masks, so no peer sees another's (docs/secure-aggregation.md).
        SecureAggregation secureAggregation;
    }

    /// @notice Secure aggregation's numbers, fixed at deploy: they decide the modulus every
    ///         node sums in (docs/secure-aggregation.md#fixed-point), so no node takes them from
    ///         its data. Ignored (and read back as zeros) when not enabled.
    struct SecureAggregation {
        bool enabled;
        uint32 bound; // B: every value of a contributed update lies in [-B, B]
        uint8 fractionBits; // f: fixed-point fractional bits
        uint64 maxWeight; // w_max: the largest weight (sample count) a join may carry
    }

    enum Status {
        None,
        Open,
        Closed,
        Final,
        Failed
    }

    enum FailReason {
        None,
        Expired,
        TooFewLive,
        ReportsDisagree
    }

    struct Node {
        bytes32 fingerprint;
        string endpoint;
        bool active;
        uint32 activeIndex1; // position in _active plus one; 0: not active. Packed with active.
        bool finished; // said its training is over (finish()); a join makes it train again
    }

    /// @dev One slot: everything a join or a report touches besides its own slots.
    struct Round {
        Status status;
        FailReason failReason;
        uint16 attempt;
        uint16 joined;
        uint16 live;
        uint16 reports;
        uint16 leadCount;
        uint16 maxCount;
        uint40 firstJoinAt;
        uint40 closedAt;
        uint40 attemptStart;
    }

    /// @dev One slot per participant and round.
    struct Seat {
        uint16 index1; // position in the join order plus one; 0: not joined
        uint16 droppedAt; // attempt in which it was dropped or withdrew; 0: live
        uint16 reportedAt; // last attempt it reported in
        uint64 weight;
        uint64 valLoss;
    }

    // ------------------------------------------------------------------ errors

    error NotOwner(address caller);
    error NotAllowed(address account);
    error NotRegistered(address account);
    error AlreadyRegistered(address account);
    error CertificateNotBound(address account, uint256 sanOffset);
    error AlreadyJoined(uint256 round, address node);
    error RoundNotOpen(uint256 round);
    error RoundNotClosed(uint256 round);
    error WrongRound(uint256 current, uint256 given);
    error WrongAttempt(uint16 current, uint16 given);
    error NotAParticipant(uint256 round, address node);
    error NotLive(uint256 round, address node);
    error DuplicateReport(uint256 round, uint16 attempt, address node);
    error DuplicateVote(uint256 round, uint16 attempt, address voter, address peer);
    error TooEarly(uint64 notBefore, uint64 now);
    error TooFewJoined(uint256 round, uint16 joined, uint16 needed);
    error BadParameters(string reason);
    error AlreadyFinished(address account);
    error SecureAggregationNeedsPeers(uint16 minPeers, uint16 needed);
    error SecureAggregationNeedsMean(uint32 mergeRule);
    error SecureAggregationBadNumbers(string reason);
    error SecureAggregationModulusTooWide(uint256 bits, uint256 limit);
    error WeightAboveMax(uint64 weight, uint64 maxWeight);

    // ------------------------------------------------------------------ events

    event Registered(address indexed node, string endpoint, bytes32 fingerprint, bytes certificate);
    event EndpointUpdated(address indexed node, string endpoint);
    event Deregistered(address indexed node);
    event Finished(address indexed node);
    event Allowed(address indexed account);
    event Revoked(address indexed account);
    event RoundOpened(uint256 indexed round);
    event Joined(uint256 indexed round, address indexed node, bytes32 commitment, uint64 weight, uint64 valLoss);
    event Left(uint256 indexed round, address indexed node);
    event RoundClosed(uint256 indexed round, address[] participants);
    event AttemptStarted(uint256 indexed round, uint16 attempt, uint64 startedAt, uint16 live);
    event DropVoted(uint256 indexed round, uint16 attempt, address indexed voter, address indexed peer);
    event Dropped(uint256 indexed round, uint16 attempt, address indexed peer);
    event Withdrawn(uint256 indexed round, uint16 attempt, address indexed node);
    event Reported(uint256 indexed round, uint16 attempt, address indexed node, bytes32 digest);
    event RoundFinalized(uint256 indexed round, uint16 attempt, bytes32 digest);
    event RoundFailed(uint256 indexed round, FailReason reason);

    // ------------------------------------------------------------------ rule ids (mirrors swarmnode/rules.py)

    uint32 internal constant MERGE_MEAN = 0;
    uint32 internal constant MERGE_MEDIAN = 1;
    uint32 internal constant MERGE_TRIMMED_MEAN = 2;
    uint32 internal constant MERGE_KRUM = 3;
    uint32 internal constant MERGE_GEOMETRIC_MEDIAN = 4;
    uint32 internal constant MERGE_CENTERED_CLIP = 5;
    uint32 internal constant SYNC_EVERY_N_BATCHES = 0;
    uint32 internal constant SYNC_ADAPTIVE = 1;
    uint64 internal constant PPM = 1_000_000;
    uint16 internal constant MAX_PEERS_LIMIT = 256;
    // Each iteration of an iterative rule is one exchange of partial sums between peers.
    uint64 internal constant MAX_ITERATIONS = 1000;
    // Secure aggregation (mirrors swarmnode/rules.py and swarmnode/secagg/fixedpoint.py): a
    // round needs three participants, or one could subtract its own update from the sum and
    // read the other's; the modulus 2^k must fit a 64-bit word with headroom bits above the
    // largest honest sum.
    uint16 internal constant SECAGG_MIN_PEERS = 3;
    uint8 internal constant SECAGG_MAX_FRACTION_BITS = 48;
    uint256 internal constant SECAGG_HEADROOM_BITS = 8;
    uint256 internal constant SECAGG_MAX_BITS = 64;

    // Sentinel so that the first report of an attempt updates a warm, non-zero slot.
    bytes32 internal constant NO_DIGEST = bytes32(uint256(1));

    // ------------------------------------------------------------------ state

    /// @notice The deployer: the only account that can allow and revoke admission.
    address public immutable owner;
    /// @notice Fewest joins a round can close with, and the floor of every quorum.
    uint16 public immutable minPeers;
    /// @notice The join that reaches this count closes the round in the same transaction.
    uint16 public immutable maxPeers;
    /// @notice Seconds after a round's first join before anyone may close it.
    uint64 public immutable joinWindow;
    /// @notice Seconds into an attempt before drop votes are accepted.
    uint64 public immutable transferDeadline;
    /// @notice Seconds from close (or from the first join while open) before anyone may expire a round.
    uint64 public immutable roundDeadline;
    /// @notice Whether only accounts the owner allowed may register.
    bool public immutable restricted;
    /// @notice Whether every merged segment is checked by a second owner (docs/trust.md#unchecked-merge).
    bool public immutable checkedMerge;
    /// @notice Fewest live participants a round may continue with: max(minPeers, the rule's need).
    uint16 public immutable minLive;
    /// @notice Digest of the model every node starts from.
    bytes32 public immutable initialModelDigest;
    bool internal immutable _secaggEnabled;
    uint32 internal immutable _secaggBound;
    uint8 internal immutable _secaggFractionBits;
    /// @dev The largest weight a join may carry: maxWeight with secure aggregation, else
    ///      uint64's largest, so that a join pays one comparison either way.
    uint64 internal immutable _weightCap;

    Rule internal _mergeRule;
    Rule internal _syncPolicy;

    /// @notice Accounts the owner admitted (used while restricted).
    mapping(address => bool) public allowed;
    mapping(address => Node) internal _nodes;
    /// @dev The active roster: a list with swap-and-pop removal, so that activeNodes() costs
    ///      what the live roster costs, never what every account that ever registered costs.
    address[] internal _active;

    // One slot for the three numbers a join, a close and a finalizing report read or write
    // together: the count rides on a slot the join reads anyway.
    /// @notice The one round that is open or closed now; every earlier round has ended.
    uint64 public currentRound;
    /// @notice The newest round that became final (0 when none has).
    uint64 public lastFinalRound;
    /// @notice Active nodes that have not finished: a round closes once all of them joined.
    uint32 public training;
    mapping(uint256 => Round) internal _rounds;
    mapping(uint256 => mapping(uint256 => address)) internal _order;
    mapping(uint256 => mapping(address => Seat)) internal _seats;
    mapping(uint256 => mapping(address => bytes32)) internal _commitments;
    mapping(uint256 => bytes32) internal _leadDigest;
    /// @dev The block each round closed in (0 while open): its hash is the round's seed, which
    ///      nobody in the round chooses (docs/chain.md#the-round-seed). One new slot per close;
    ///      the Round slot has no room left for a block number.
    mapping(uint256 => uint64) private _closedBlock;
    /// @notice The merged-model digest each final round agreed on.
    mapping(uint256 => bytes32) public finalDigest;
    mapping(uint256 => mapping(uint256 => mapping(bytes32 => uint16))) internal _otherCounts;
    mapping(uint256 => mapping(uint256 => mapping(address => mapping(address => bool)))) internal _voted;
    mapping(uint256 => mapping(uint256 => mapping(address => uint16))) internal _votes;

    // ------------------------------------------------------------------ construction

    /// @notice Deploys a swarm with parameters that can never change afterwards.
    /// @param p The swarm parameters; a combination that could leave a round unable to end is refused.
    constructor(Params memory p) {
        if (p.minPeers < 2) revert BadParameters("minPeers must be at least 2");
        if (p.maxPeers < p.minPeers) revert BadParameters("maxPeers must be at least minPeers");
        if (p.maxPeers > MAX_PEERS_LIMIT) revert BadParameters("maxPeers must be at most 256");
        if (p.joinWindow == 0) revert BadParameters("joinWindow must be positive");
        if (p.transferDeadline == 0) revert BadParameters("transferDeadline must be positive");
        if (p.roundDeadline <= 2 * uint256(p.transferDeadline)) {
            revert BadParameters("roundDeadline must exceed 2 x transferDeadline");
        }
        if (p.roundDeadline <= p.joinWindow) revert BadParameters("roundDeadline must exceed joinWindow");
        if (p.initialModelDigest == bytes32(0)) revert BadParameters("initialModelDigest must be set");
        uint16 ruleNeeds = _mergeRuleNeeds(p.mergeRule);
        if (ruleNeeds > p.maxPeers) revert BadParameters("mergeRule needs more peers than maxPeers");
        _checkSyncPolicy(p.syncPolicy);
        SecureAggregation memory sa = p.secureAggregation;
        if (sa.enabled) _checkSecureAggregation(p.minPeers, p.maxPeers, p.mergeRule.id, sa);

        owner = msg.sender;
        minPeers = p.minPeers;
        maxPeers = p.maxPeers;
        joinWindow = p.joinWindow;
        transferDeadline = p.transferDeadline;
        roundDeadline = p.roundDeadline;
        restricted = p.restricted;
        checkedMerge = p.checkedMerge;
        minLive = ruleNeeds > p.minPeers ? ruleNeeds : p.minPeers;
        initialModelDigest = p.initialModelDigest;
        _mergeRule = p.mergeRule;
        _syncPolicy = p.syncPolicy;
        _secaggEnabled = sa.enabled;
        _secaggBound = sa.enabled ? sa.bound : 0;
        _secaggFractionBits = sa.enabled ? sa.fractionBits : 0;
        _weightCap = sa.enabled ? sa.maxWeight : type(uint64).max;
        _openRound(1);
    }

    /// @dev Refuses secure-aggregation numbers that cannot work, in the order of
    ///      SwarmParams.validate: the largest honest sum, maxPeers x maxWeight x B x 2^f, takes
    ///      its bit length plus a sign bit plus the headroom, at most 64 (FixedPoint.bits).
    function _checkSecureAggregation(uint16 minPeers_, uint16 maxPeers_, uint32 ruleId, SecureAggregation memory sa)
        internal
        pure
    {
        if (minPeers_ < SECAGG_MIN_PEERS) revert SecureAggregationNeedsPeers(minPeers_, SECAGG_MIN_PEERS);
        if (ruleId != MERGE_MEAN) revert SecureAggregationNeedsMean(ruleId);
        if (sa.bound == 0) revert SecureAggregationBadNumbers("bound must be at least 1");
        if (sa.fractionBits > SECAGG_MAX_FRACTION_BITS) {
            revert SecureAggregationBadNumbers("fraction bits must be at most 48");
        }
        if (sa.maxWeight == 0) revert SecureAggregationBadNumbers("max weight must be at least 1");
        // below 2^(16 + 64 + 32 + 48): no overflow
        uint256 largest = uint256(maxPeers_) * sa.maxWeight * (uint256(sa.bound) << sa.fractionBits);
        uint256 bits = 1 + SECAGG_HEADROOM_BITS;
        while (largest != 0) {
            bits += 1;
            largest >>= 1;
        }
        if (bits > SECAGG_MAX_BITS) revert SecureAggregationModulusTooWide(bits, SECAGG_MAX_BITS);
    }

    function _mergeRuleNeeds(Rule memory r) internal pure returns (uint16) {
        uint64[4] memory q = r.params;
        if (r.id == MERGE_MEAN || r.id == MERGE_MEDIAN) {
            if (q[0] != 0 || q[1] != 0 || q[2] != 0 || q[3] != 0) revert BadParameters("rule takes no parameters");
            return 1;
        }
        if (r.id == MERGE_TRIMMED_MEAN) {
            if (q[0] >= PPM / 2) revert BadParameters("trimmed mean: beta must be below 0.5");
            return 1;
        }
        if (r.id == MERGE_KRUM) {
            // q[0] = f (tolerated Byzantine peers), q[1] = m (models kept; 0 means 1, plain Krum)
            if (q[0] > 126) revert BadParameters("krum: f too large");
            if (q[1] > MAX_PEERS_LIMIT) revert BadParameters("krum: m too large");
            uint64 needs = 2 * q[0] + 3;
            if (q[1] > needs) needs = q[1];
            return uint16(needs);
        }
        if (r.id == MERGE_GEOMETRIC_MEDIAN) {
            // q[0] = tolerance: stop when a step moves the estimate by at most q[0]/1e6 of the
            // median distance to the contributions; q[1] = iteration cap
            if (q[0] == 0) revert BadParameters("geometric median: tolerance must be positive");
            if (q[1] == 0 || q[1] > MAX_ITERATIONS) {
                revert BadParameters("geometric median: iteration cap must be 1-1000");
            }
            return 1;
        }
        if (r.id == MERGE_CENTERED_CLIP) {
            // q[0] = clipping radius tau, an absolute L2 norm over the whole vector, in
            // millionths; q[1] = iterations
            if (q[0] == 0) revert BadParameters("centered clipping: tau must be positive");
            if (q[1] == 0 || q[1] > MAX_ITERATIONS) {
                revert BadParameters("centered clipping: iterations must be 1-1000");
            }
            return 1;
        }
        revert BadParameters("unknown merge rule");
    }

    function _checkSyncPolicy(Rule memory s) internal pure {
        uint64[4] memory q = s.params;
        if (s.id == SYNC_EVERY_N_BATCHES) {
            if (q[0] == 0) revert BadParameters("sync every N batches: N must be positive");
            return;
        }
        if (s.id == SYNC_ADAPTIVE) {
            // q[0] = first interval, q[1] = min interval, q[2] = max interval, q[3] = growth in ppm
            if (q[1] == 0 || q[1] > q[0] || q[0] > q[2]) {
                revert BadParameters("adaptive sync: need 0 < min <= first <= max");
            }
            if (q[3] <= PPM) revert BadParameters("adaptive sync: growth must exceed 1.0");
            return;
        }
        revert BadParameters("unknown sync policy");
    }

    // ------------------------------------------------------------------ admission

    modifier onlyOwner() {
        if (msg.sender != owner) revert NotOwner(msg.sender);
        _;
    }

    /// @notice Lets an account register while admission is restricted.
    /// @param account The account to admit.
    function allow(address account) external onlyOwner {
        allowed[account] = true;
        emit Allowed(account);
    }

    /// @notice Takes an account's admission back; a registered node is deregistered at once.
    /// @param account The account to revoke.
    function revoke(address account) external onlyOwner {
        allowed[account] = false;
        emit Revoked(account);
        if (restricted && _nodes[account].active) _deregister(account);
    }

    // ------------------------------------------------------------------ roster

    /// @notice Registers the caller as a node of this swarm.
    /// @dev The certificate must carry the caller's account, as the "0x" plus lowercase hex the
    ///      certificate's DNS SubjectAltName holds, at sanOffset. Nodes accept a peer only when
    ///      the SubjectAltName names the registering account, so a copied certificate is
    ///      useless to anyone else, and no certificate is ever reserved by an account: nobody
    ///      can block its owner by registering it first. The signature is not verified here
    ///      (no P-256 precompile under prague); peers verify it in the TLS handshake.
    /// @param endpoint The node's gRPC endpoint, host:port.
    /// @param certificate The node's full TLS certificate (DER); only its SHA-256 is stored.
    /// @param sanOffset Where in the certificate the caller's account name starts.
    function register(string calldata endpoint, bytes calldata certificate, uint256 sanOffset) external {
        if (restricted && !allowed[msg.sender]) revert NotAllowed(msg.sender);
        Node storage n = _nodes[msg.sender];
        if (n.active) revert AlreadyRegistered(msg.sender);
        if (bytes(endpoint).length == 0 || bytes(endpoint).length > 255) {
            revert BadParameters("endpoint must be 1-255 bytes");
        }
        if (certificate.length == 0 || certificate.length > 8192) {
            revert BadParameters("certificate must be 1-8192 bytes");
        }
        if (!_namesAccount(certificate, sanOffset, msg.sender)) {
            revert CertificateNotBound(msg.sender, sanOffset);
        }
        bytes32 fingerprint = sha256(certificate);
        n.fingerprint = fingerprint;
        n.endpoint = endpoint;
        n.active = true;
        _active.push(msg.sender);
        n.activeIndex1 = uint32(_active.length);
        training += 1;
        emit Registered(msg.sender, endpoint, fingerprint, certificate);
    }

    /// @dev Whether certificate[offset:offset+42] is "0x" and the 40 lowercase hex digits of account.
    function _namesAccount(bytes calldata certificate, uint256 offset, address account)
        internal
        pure
        returns (bool)
    {
        if (offset > certificate.length || certificate.length - offset < 42) return false;
        if (certificate[offset] != "0" || certificate[offset + 1] != "x") return false;
        uint160 value = uint160(account);
        for (uint256 i = 41; i >= 2; i--) {
            uint8 digit = uint8(value & 0xf);
            value >>= 4;
            bytes1 want = bytes1(digit < 10 ? 48 + digit : 87 + digit);
            if (certificate[offset + i] != want) return false;
        }
        return true;
    }

    /// @notice Moves the caller's gRPC endpoint; the certificate stays.
    /// @param endpoint The new endpoint, host:port.
    function updateEndpoint(string calldata endpoint) external {
        Node storage n = _nodes[msg.sender];
        if (!n.active) revert NotRegistered(msg.sender);
        if (bytes(endpoint).length == 0 || bytes(endpoint).length > 255) {
            revert BadParameters("endpoint must be 1-255 bytes");
        }
        n.endpoint = endpoint;
        emit EndpointUpdated(msg.sender, endpoint);
    }

    /// @notice Leaves the swarm; an open round is left and a closed one withdrawn from. An open
    ///         round that every node still training has joined closes.
    function deregister() external {
        if (!_nodes[msg.sender].active) revert NotRegistered(msg.sender);
        _deregister(msg.sender);
    }

    function _deregister(address account) internal {
        Node storage n = _nodes[account];
        uint256 index = n.activeIndex1 - 1;
        if (!n.finished) training -= 1;
        n.active = false;
        n.activeIndex1 = 0;
        n.finished = false;
        uint256 last = _active.length - 1;
        if (index != last) {
            address moved = _active[last];
            _active[index] = moved;
            _nodes[moved].activeIndex1 = uint32(index + 1);
        }
        _active.pop();
        emit Deregistered(account);
        uint256 r = currentRound;
        Seat storage s = _seats[r][account];
        Round storage rd = _rounds[r];
        if (rd.status == Status.Open) {
            if (s.index1 != 0) _leave(r, account);
            _closeIfAllJoined(r, rd);
        } else if (rd.status == Status.Closed && s.index1 != 0 && s.droppedAt == 0) {
            _withdraw(r, account);
        }
    }

    /// @notice Says the caller's training is over: rounds no longer wait for it. It stays
    ///         registered (it still serves the models it holds to peers catching up); an open
    ///         round it joined is left, a closed one it is live in goes on with it. If every
    ///         node still training has joined the open round, it closes now. Joining a round
    ///         later makes the caller train again, as registering anew does.
    function finish() external {
        Node storage n = _nodes[msg.sender];
        if (!n.active) revert NotRegistered(msg.sender);
        if (n.finished) revert AlreadyFinished(msg.sender);
        n.finished = true;
        training -= 1;
        emit Finished(msg.sender);
        uint256 r = currentRound;
        Round storage rd = _rounds[r];
        if (rd.status != Status.Open) return;
        if (_seats[r][msg.sender].index1 != 0) _leave(r, msg.sender);
        _closeIfAllJoined(r, rd);
    }

    /// @notice The active nodes still training (not finished), in roster order.
    /// @return accounts Their accounts.
    function trainingNodes() external view returns (address[] memory accounts) {
        uint256 count = _active.length;
        address[] memory found = new address[](training);
        uint256 k = 0;
        for (uint256 i = 0; i < count; i++) {
            address a = _active[i];
            if (!_nodes[a].finished) found[k++] = a;
        }
        return found;
    }

    /// @notice One registered node.
    /// @param account The node's account.
    /// @return fingerprint SHA-256 of its TLS certificate.
    /// @return endpoint Its gRPC endpoint.
    /// @return active Whether it is in the swarm now.
    function node(address account) external view returns (bytes32 fingerprint, string memory endpoint, bool active) {
        Node storage n = _nodes[account];
        return (n.fingerprint, n.endpoint, n.active);
    }

    /// @notice The active roster, for peers that check certificates against it. Order: the
    ///         registration order, except that a deregistration moves the last entry into its place.
    /// @return accounts The active nodes' accounts.
    /// @return endpoints Their gRPC endpoints.
    /// @return fingerprints SHA-256 of their TLS certificates.
    function activeNodes()
        external
        view
        returns (address[] memory accounts, string[] memory endpoints, bytes32[] memory fingerprints)
    {
        uint256 count = _active.length;
        accounts = new address[](count);
        endpoints = new string[](count);
        fingerprints = new bytes32[](count);
        for (uint256 i = 0; i < count; i++) {
            address a = _active[i];
            Node storage n = _nodes[a];
            accounts[i] = a;
            endpoints[i] = n.endpoint;
            fingerprints[i] = n.fingerprint;
        }
    }

    // ------------------------------------------------------------------ parameters

    /// @notice The merge rule every participant applies.
    /// @return id The rule id.
    /// @return params Its four parameters.
    function mergeRule() external view returns (uint32 id, uint64[4] memory params) {
        return (_mergeRule.id, _mergeRule.params);
    }

    /// @notice The sync policy every node follows.
    /// @return id The policy id.
    /// @return params Its four parameters.
    function syncPolicy() external view returns (uint32 id, uint64[4] memory params) {
        return (_syncPolicy.id, _syncPolicy.params);
    }

    /// @notice Whether the swarm sums updates under masks, and the numbers fixed with it.
    /// @return enabled Whether secure aggregation is on (the rest are zero when off).
    /// @return bound B: every value of an update lies in [-B, B].
    /// @return fractionBits f: fixed-point fractional bits.
    /// @return maxWeight The largest weight a join may carry.
    function secureAggregation()
        external
        view
        returns (bool enabled, uint32 bound, uint8 fractionBits, uint64 maxWeight)
    {
        if (!_secaggEnabled) return (false, 0, 0, 0);
        return (true, _secaggBound, _secaggFractionBits, _weightCap);
    }

    /// @notice The digest of the newest agreed model: the last final round's, or the initial one.
    /// @return round The last final round (0 when none).
    /// @return digest That round's merged-model digest.
    function latestModel() external view returns (uint256 round, bytes32 digest) {
        round = lastFinalRound;
        digest = round == 0 ? initialModelDigest : finalDigest[round];
    }

    // ------------------------------------------------------------------ rounds: joining

    /// @notice Joins the open round with a commitment to the update this node will contribute.
    ///         The join that makes every node still training a participant (with at least
    ///         minPeers), or that reaches maxPeers, closes the round. A finished node that joins
    ///         trains again.
    /// @param round The round to join; must be the current, open one.
    /// @param commitment Digest of the node's canonical update vector.
    /// @param weight The node's sample count (positive; at most maxWeight with secure aggregation).
    /// @param valLoss The node's validation loss, scaled by 1e6.
    function join(uint256 round, bytes32 commitment, uint64 weight, uint64 valLoss) external {
        Round storage rd = _openRoundFor(round);
        Node storage n = _nodes[msg.sender];
        if (!n.active) revert NotRegistered(msg.sender);
        Seat storage s = _seats[round][msg.sender];
        if (s.index1 != 0) revert AlreadyJoined(round, msg.sender);
        if (commitment == bytes32(0)) revert BadParameters("commitment must be set");
        if (weight == 0) revert BadParameters("weight must be positive");
        if (weight > _weightCap) revert WeightAboveMax(weight, _weightCap);

        if (n.finished) {
            n.finished = false;
            training += 1;
        }
        uint16 index = rd.joined;
        _order[round][index] = msg.sender;
        s.index1 = index + 1;
        s.weight = weight;
        s.valLoss = valLoss;
        _commitments[round][msg.sender] = commitment;
        rd.joined = index + 1;
        if (index == 0) rd.firstJoinAt = uint40(block.timestamp);
        emit Joined(round, msg.sender, commitment, weight, valLoss);
        uint16 joined = index + 1;
        if (joined == maxPeers || (joined >= minPeers && joined >= training)) _close(round, rd);
    }

    /// @notice Leaves the open round before it closes (named leaveRound: `leave` is reserved in newer Solidity).
    /// @param round The current, open round.
    function leaveRound(uint256 round) external {
        _openRoundFor(round);
        if (_seats[round][msg.sender].index1 == 0) revert NotAParticipant(round, msg.sender);
        _leave(round, msg.sender);
    }

    function _leave(uint256 round, address account) internal {
        Round storage rd = _rounds[round];
        uint16 index = _seats[round][account].index1 - 1;
        uint16 last = rd.joined - 1;
        if (index != last) {
            address moved = _order[round][last];
            _order[round][index] = moved;
            _seats[round][moved].index1 = index + 1;
        }
        delete _order[round][last];
        delete _seats[round][account];
        delete _commitments[round][account];
        rd.joined = last;
        if (last == 0) rd.firstJoinAt = 0;
        emit Left(round, account);
    }

    /// @notice Closes the round once its join window (from the first join) has passed.
    /// @param round The current, open round; it needs at least minPeers joined.
    function close(uint256 round) external {
        Round storage rd = _openRoundFor(round);
        if (rd.joined < minPeers) revert TooFewJoined(round, rd.joined, minPeers);
        uint64 notBefore = uint64(rd.firstJoinAt) + joinWindow;
        if (block.timestamp < notBefore) revert TooEarly(notBefore, uint64(block.timestamp));
        _close(round, rd);
    }

    /// @dev Closes an open round that every node still training has joined, with minPeers.
    function _closeIfAllJoined(uint256 round, Round storage rd) internal {
        uint16 joined = rd.joined;
        if (joined >= minPeers && joined >= training) _close(round, rd);
    }

    function _close(uint256 round, Round storage rd) internal {
        uint16 n = rd.joined;
        address[] memory list = new address[](n);
        for (uint256 i = 0; i < n; i++) list[i] = _order[round][i];
        rd.status = Status.Closed;
        rd.live = n;
        rd.closedAt = uint40(block.timestamp);
        _closedBlock[round] = uint64(block.number);
        emit RoundClosed(round, list);
        _startAttempt(round, rd, 1);
    }

    // ------------------------------------------------------------------ rounds: faults

    /// @notice Votes to drop a live peer that failed to deliver in this attempt.
    /// @param round The current, closed round.
    /// @param attempt The current attempt.
    /// @param peer The live participant to drop; needs votes from more than half of the other live ones.
    function drop(uint256 round, uint16 attempt, address peer) external {
        Round storage rd = _closedRoundFor(round, attempt);
        _requireLive(round, msg.sender);
        _requireLive(round, peer);
        if (peer == msg.sender) revert BadParameters("cannot vote to drop oneself");
        uint64 notBefore = uint64(rd.attemptStart) + transferDeadline;
        if (block.timestamp < notBefore) revert TooEarly(notBefore, uint64(block.timestamp));
        if (_voted[round][attempt][msg.sender][peer]) revert DuplicateVote(round, attempt, msg.sender, peer);
        _voted[round][attempt][msg.sender][peer] = true;
        uint16 votes = _votes[round][attempt][peer] + 1;
        _votes[round][attempt][peer] = votes;
        emit DropVoted(round, attempt, msg.sender, peer);
        if (2 * uint256(votes) > uint256(rd.live) - 1) {
            emit Dropped(round, attempt, peer);
            _removeLive(round, rd, peer);
        }
    }

    /// @notice Withdraws the caller from a closed round it cannot finish; it may join the next.
    /// @param round The current, closed round.
    function withdraw(uint256 round) external {
        Round storage rd = _rounds[round];
        if (round != currentRound) revert WrongRound(currentRound, round);
        if (rd.status != Status.Closed) revert RoundNotClosed(round);
        _requireLive(round, msg.sender);
        _withdraw(round, msg.sender);
    }

    function _withdraw(uint256 round, address account) internal {
        Round storage rd = _rounds[round];
        emit Withdrawn(round, rd.attempt, account);
        _removeLive(round, rd, account);
    }

    function _removeLive(uint256 round, Round storage rd, address peer) internal {
        _seats[round][peer].droppedAt = rd.attempt;
        rd.live -= 1;
        if (rd.live < minLive) {
            _fail(round, rd, FailReason.TooFewLive);
        } else {
            _startAttempt(round, rd, rd.attempt + 1);
        }
    }

    /// @notice Fails a round whose deadline has passed and opens the next one.
    /// @param round The current round. Its deadline counts from close, or from the first join while open.
    function expire(uint256 round) external {
        if (round != currentRound) revert WrongRound(currentRound, round);
        Round storage rd = _rounds[round];
        uint64 start;
        if (rd.status == Status.Closed) {
            start = uint64(rd.closedAt);
        } else {
            if (rd.joined == 0) revert TooFewJoined(round, 0, minPeers);
            start = uint64(rd.firstJoinAt);
        }
        uint64 notBefore = start + roundDeadline;
        if (block.timestamp < notBefore) revert TooEarly(notBefore, uint64(block.timestamp));
        _fail(round, rd, FailReason.Expired);
    }

    // ------------------------------------------------------------------ rounds: reporting

    /// @notice Reports the digest of the merged model this participant computed in this attempt.
    /// @param round The current, closed round.
    /// @param attempt The current attempt.
    /// @param digest Digest of the merged canonical vector.
    function report(uint256 round, uint16 attempt, bytes32 digest) external {
        Round storage rd = _closedRoundFor(round, attempt);
        Seat storage s = _requireLive(round, msg.sender);
        if (s.reportedAt == attempt) revert DuplicateReport(round, attempt, msg.sender);
        if (digest == bytes32(0) || digest == NO_DIGEST) revert BadParameters("digest must be set");
        s.reportedAt = attempt;
        emit Reported(round, attempt, msg.sender, digest);

        uint16 count;
        bytes32 lead = _leadDigest[round];
        if (lead == NO_DIGEST || lead == digest) {
            if (lead == NO_DIGEST) _leadDigest[round] = digest;
            count = rd.leadCount + 1;
            rd.leadCount = count;
        } else {
            count = _otherCounts[round][attempt][digest] + 1;
            _otherCounts[round][attempt][digest] = count;
        }
        uint16 reports = rd.reports + 1;
        rd.reports = reports;
        if (count > rd.maxCount) rd.maxCount = count;

        uint16 needed = quorum(rd.live);
        if (count >= needed) {
            rd.status = Status.Final;
            finalDigest[round] = digest;
            lastFinalRound = uint64(round);
            emit RoundFinalized(round, attempt, digest);
            _openRound(round + 1);
        } else if (uint256(rd.maxCount) + (rd.live - reports) < needed) {
            _fail(round, rd, FailReason.ReportsDisagree);
        }
    }

    /// @notice Agreeing reports needed to finalize among `live` participants: max(minPeers, floor(live/2)+1).
    /// @param live The number of live participants.
    /// @return The quorum.
    function quorum(uint16 live) public view returns (uint16) {
        uint16 majority = live / 2 + 1;
        return majority > minPeers ? majority : minPeers;
    }

    // ------------------------------------------------------------------ rounds: views

    /// @notice One round's state.
    /// @param round The round number.
    /// @return status None, Open, Closed, Final or Failed.
    /// @return failReason Why it failed, when it did.
    /// @return attempt The current attempt (0 before close).
    /// @return joined How many joined (the participant count after close).
    /// @return live How many participants are live in the current attempt.
    /// @return reports Reports in the current attempt.
    /// @return firstJoinAt Time of the first join (0 when none).
    /// @return closedAt Time of close (0 while open).
    /// @return attemptStart Start of the current attempt.
    /// @return closedBlock The block the round closed in (0 while open); its hash is the seed.
    /// @return trainingNow Nodes still training now, whichever round is asked about.
    function getRound(uint256 round)
        external
        view
        returns (
            Status status,
            FailReason failReason,
            uint16 attempt,
            uint16 joined,
            uint16 live,
            uint16 reports,
            uint64 firstJoinAt,
            uint64 closedAt,
            uint64 attemptStart,
            uint64 closedBlock,
            uint32 trainingNow
        )
    {
        Round storage rd = _rounds[round];
        return (
            rd.status,
            rd.failReason,
            rd.attempt,
            rd.joined,
            rd.live,
            rd.reports,
            rd.firstJoinAt,
            rd.closedAt,
            rd.attemptStart,
            _closedBlock[round],
            training
        );
    }

    /// @notice A round's participants in seat order (fixed at close), with their seats. Seat order
    ///         is join order, except that a leave moves the last joiner into the leaver's seat.
    /// @param round The round number.
    /// @return nodes Accounts in order.
    /// @return commitments Their commitments.
    /// @return weights Their sample counts.
    /// @return valLosses Their validation losses (scaled by 1e6).
    /// @return droppedAt The attempt each was dropped or withdrew in (0: live).
    /// @return reportedAt The last attempt each reported in.
    function participants(uint256 round)
        external
        view
        returns (
            address[] memory nodes,
            bytes32[] memory commitments,
            uint64[] memory weights,
            uint64[] memory valLosses,
            uint16[] memory droppedAt,
            uint16[] memory reportedAt
        )
    {
        uint256 n = _rounds[round].joined;
        nodes = new address[](n);
        commitments = new bytes32[](n);
        weights = new uint64[](n);
        valLosses = new uint64[](n);
        droppedAt = new uint16[](n);
        reportedAt = new uint16[](n);
        for (uint256 i = 0; i < n; i++) {
            address a = _order[round][i];
            Seat storage s = _seats[round][a];
            nodes[i] = a;
            commitments[i] = _commitments[round][a];
            weights[i] = s.weight;
            valLosses[i] = s.valLoss;
            droppedAt[i] = s.droppedAt;
            reportedAt[i] = s.reportedAt;
        }
    }

    /// @notice Drop votes against a peer in one attempt.
    /// @param round The round.
    /// @param attempt The attempt.
    /// @param peer The peer voted against.
    /// @return The number of votes.
    function dropVotes(uint256 round, uint16 attempt, address peer) external view returns (uint16) {
        return _votes[round][attempt][peer];
    }

    // ------------------------------------------------------------------ internals

    function _openRoundFor(uint256 round) internal view returns (Round storage rd) {
        if (round != currentRound) revert WrongRound(currentRound, round);
        rd = _rounds[round];
        if (rd.status != Status.Open) revert RoundNotOpen(round);
    }

    function _closedRoundFor(uint256 round, uint16 attempt) internal view returns (Round storage rd) {
        if (round != currentRound) revert WrongRound(currentRound, round);
        rd = _rounds[round];
        if (rd.status != Status.Closed) revert RoundNotClosed(round);
        if (attempt != rd.attempt) revert WrongAttempt(rd.attempt, attempt);
    }

    function _requireLive(uint256 round, address account) internal view returns (Seat storage s) {
        s = _seats[round][account];
        if (s.index1 == 0) revert NotAParticipant(round, account);
        if (s.droppedAt != 0) revert NotLive(round, account);
    }

    function _startAttempt(uint256 round, Round storage rd, uint16 attempt) internal {
        rd.attempt = attempt;
        rd.attemptStart = uint40(block.timestamp);
        rd.reports = 0;
        rd.leadCount = 0;
        rd.maxCount = 0;
        _leadDigest[round] = NO_DIGEST;
        emit AttemptStarted(round, attempt, uint64(block.timestamp), rd.live);
    }

    function _fail(uint256 round, Round storage rd, FailReason reason) internal {
        rd.status = Status.Failed;
        rd.failReason = reason;
        emit RoundFailed(round, reason);
        _openRound(round + 1);
    }

    function _openRound(uint256 round) internal {
        currentRound = uint64(round);
        _rounds[round].status = Status.Open;
        emit RoundOpened(round);
    }
}
